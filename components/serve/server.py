"""Start, wait for and stop a local MLServer for one MLflow model: the runtime KServe runs for
`modelFormat: mlflow`, from the serving environment (.venv-serve; MLServer pins its own fastapi
and pandas, so it cannot share the pipeline's venv), with distilflow's input checks
(components/serve/runtime.py, copied into the model folder as distilflow_runtime.py).

A server is one process group: `mlserver start` plus its inference-pool worker(s). stop() ends
it by PID: SIGTERM to the main process (MLServer then stops its workers), then SIGKILL to any
process of the tree still alive after the grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from components.lib.core.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVE_VENV = PROJECT_ROOT / ".venv-serve"
RUNTIME = "distilflow_runtime.DistilflowRuntime"
START_TIMEOUT_S = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_venv() -> Path:
    """The serving environment: $DISTILFLOW_SERVE_VENV, else .venv-serve beside this project."""
    venv = Path(os.environ.get("DISTILFLOW_SERVE_VENV") or SERVE_VENV)
    if not (venv / "bin" / "mlserver").exists():
        raise UserError(f"{venv}: no MLServer there; build the serving environment with `make serve-setup`")
    return venv


def write_model_folder(model_dir: Path, folder: Path, name: str, host: str, ports: dict[str, int],
                       workers: int = 1, extra: dict | None = None) -> Path:
    """An MLServer model folder: settings.json, model-settings.json and the runtime module."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"host": host, "http_port": ports["http"], "grpc_port": ports["grpc"], "metrics_port": ports["metrics"],
                "parallel_workers": workers, "debug": False, "metrics_dir": str(folder / ".metrics"),
                "environments_dir": str(folder / ".envs")}
    model = {"name": name, "implementation": RUNTIME,
             "parameters": {"uri": str(Path(model_dir).resolve()), "extra": extra or {}}}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n")
    shutil.copy2(Path(__file__).with_name("runtime.py"), folder / "distilflow_runtime.py")
    return folder


@dataclass
class Server:
    """A running MLServer: its process (group leader), base URL, model name and log file."""

    proc: subprocess.Popen
    url: str
    name: str
    folder: Path
    log: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        stop(self)


def _status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def start(model_dir: Path, name: str = "model", host: str = "127.0.0.1", port: int | None = None,
          workers: int = 1, extra: dict | None = None, folder: Path | None = None,
          timeout_s: float = START_TIMEOUT_S, env: dict[str, str] | None = None) -> Server:
    """Start MLServer on host:port (a free port when None) and return once the model is ready."""
    model_dir = Path(model_dir)
    if not (model_dir / "MLmodel").exists():
        raise UserError(f"{model_dir}: not an MLflow model dir (no MLmodel file)")
    venv = serve_venv()
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="distilflow-serve-")
        folder = Path(tmp.name)
    ports = {"http": port or free_port(host), "grpc": free_port(host), "metrics": free_port(host)}
    write_model_folder(model_dir, folder, name, host, ports, workers, extra)
    log = folder / "server.log"
    run_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
    run_env.pop("PYTHONPATH", None)  # the model loads its own `components` (code_paths), never this repo's
    with open(log, "wb") as out:
        # Own session: the server and its workers form one process group we can account for and stop.
        proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(folder)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=folder, env=run_env, start_new_session=True)
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    server = Server(proc, f"http://{url_host}:{ports['http']}", name, folder, log, tmp)
    try:
        wait_ready(server, timeout_s)
    except BaseException:
        stop(server)
        raise
    return server


def wait_ready(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    ready = f"{server.url}/v2/models/{server.name}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise UserError(f"MLServer exited with code {server.proc.returncode} before the model was ready:\n"
                            f"{server.log_tail()}")
        if _status(ready) == 200:
            return
        if "Couldn't load model" in server.log_tail(20000):
            raise UserError(f"MLServer could not load {server.name}:\n{server.log_tail()}")
        time.sleep(0.3)
    raise UserError(f"MLServer not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def process_tree(pid: int) -> list:
    """psutil.Process objects of pid and all its descendants (those still alive)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process tree, in MiB (processes that vanish while summing count 0)."""
    import psutil

    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def stop(server: Server, grace_s: float = 15.0) -> list[int]:
    """Stop the server by PID and every child it started; returns the PIDs that were running."""
    import psutil

    tree = process_tree(server.pid)
    pids = [p.pid for p in tree]
    if server.alive():
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(tree, timeout=min(grace_s, 5.0))
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)
    if server.alive():
        server.proc.kill()
    server.proc.wait(timeout=5.0)
    if server._tmp is not None:
        server._tmp.cleanup()
        server._tmp = None
    return pids
