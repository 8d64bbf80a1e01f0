"""A real MLflow tracking server for tests: sqlite backend, served artifacts, a random free port.

Plain functions; the session fixture ``mlflow_server`` that starts one server per session (and
stops it by its process group) is in conftest.py, so test modules just ask for it by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(root: Path, timeout_s: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, str, Path]:
    """Start `python -m mlflow server` under root; returns (process, uri, log file) once /health is 200."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the server stops
    # Own process group: `mlflow server` forks uvicorn/gunicorn workers we must stop too.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(uri):
            return proc, uri, log_path
        time.sleep(0.5)
    stop_mlflow_server(proc)
    tail = log_path.read_text(errors="replace")[-3000:]
    state = f"exited with {proc.returncode}" if proc.returncode is not None else f"not healthy after {timeout_s:.0f} s"
    raise RuntimeError(f"mlflow server at {uri} {state}; log {log_path}:\n{tail}")


def stop_mlflow_server(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Terminate the server's process group (it was started in its own session), then kill."""
    if proc.poll() is not None:
        return
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=grace_s)

