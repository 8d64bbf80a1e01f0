"""A tracking server that is down or failing stops a step, or the whole pipeline, within seconds
with one `error:` line and exit 2, before any work: a closed port, and a real HTTP server on
127.0.0.1 that answers 500 to everything (MLflow alone retries both for ~4 minutes)."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.lib.core.errors import UserError
from components.lib.tracking import runs as tracking

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Bounded by counting, not by timing (machines are noisy): at most this many tries, each with
# MLflow's own retries off; the wall time is printed (-s), the benchmark-style figure.
MAX_TRIES = len(tracking.PROBE_DELAYS) + 1


class Answering(http.server.ThreadingHTTPServer):
    """Answers every request with one status and body; counts the requests it saw."""

    def __init__(self, status: int, body: bytes, content_type: str):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def answering() -> Iterator[callable]:
    servers: list[Answering] = []

    def start(status: int, body: bytes = b"Internal Server Error", content_type: str = "text/plain") -> Answering:
        server = Answering(status, body, content_type)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_uri() -> str:
    """A port nothing listens on: bound to get a free number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_cli(args: list[str], uri: str, work: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    sets = [f"work_dir={work}", f"tracking.uri={uri}", "tracking.enabled=true"]
    cmd = [sys.executable, *args, "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)
    return proc, time.monotonic() - start


def assert_fails_fast(proc: subprocess.CompletedProcess, seconds: float, uri: str, work: Path, state: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # nothing but the one error line: no retry warnings either
    assert lines[0].startswith(f"error: MLflow tracking server {uri} {state} (")
    assert "tracking.uri" in lines[0] and "tracking.enabled=false" in lines[0]
    tries = re.search(r"\((?:[^;()]+); (\d+) tries in \d+s\)", lines[0])
    assert tries is not None and 1 <= int(tries.group(1)) <= MAX_TRIES, lines[0]
    assert not work.exists(), sorted(p.name for p in work.rglob("*"))  # no data dir, no sqlite store, no kfp root
    print(f"{' '.join(proc.args[1:3])} {uri}: exit 2 after {seconds:.1f}s")  # the figure, with -s


STEP = ["-m", "components.prepare_data"]
PIPELINE = ["-m", "pipeline", "run"]


@pytest.mark.parametrize("args", [STEP, PIPELINE], ids=["prepare-data", "distilflow-run"])
def test_closed_port(args, tmp_path):
    uri, work = closed_port_uri(), tmp_path / "work"
    proc, seconds = run_cli(args, uri, work)
    assert_fails_fast(proc, seconds, uri, work, "unreachable")
    assert "connection refused" in proc.stderr


@pytest.mark.parametrize("args", [STEP, PIPELINE], ids=["prepare-data", "distilflow-run"])
def test_server_answering_500(args, answering, tmp_path):
    server, work = answering(500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}', "application/json"), tmp_path / "work"
    proc, seconds = run_cli(args, server.uri, work)
    assert_fails_fast(proc, seconds, server.uri, work, "failing")
    assert "HTTP 500" in proc.stderr
    assert 1 <= server.requests <= MAX_TRIES  # bounded: MLflow alone would send 8 per call


@pytest.mark.parametrize(("status", "body", "content_type"), [
    (401, b"You are not authenticated.", "text/plain"),  # what `mlflow server --app-name basic-auth` says
    (403, b'{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}', "application/json"),
    (404, b"<html>Not Found</html>", "text/html"),  # a URI that is some other web server
])
def test_a_refusal_is_not_retried(status, body, content_type, answering):
    server = answering(status, body, content_type)
    with pytest.raises(UserError, match=rf"^MLflow tracking server {server.uri} .*\(HTTP {status}\)") as err:
        tracking.check_server(server.uri)
    assert server.requests == 1  # one try, no retries
    assert ("MLFLOW_TRACKING_USERNAME" in str(err.value)) == (status != 404)
    assert "\n" not in str(err.value)


def test_credentials_stay_out_of_the_message():
    uri = closed_port_uri().replace("http://", "http://alice:s3cret@")
    with pytest.raises(UserError) as err:
        tracking.check_server(uri)
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)


@pytest.mark.integration
def test_a_live_server_passes_and_mlflow_settings_are_restored(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    tracking._REACHED.discard(mlflow_server)
    tracking.check_server(mlflow_server)
    assert mlflow_server in tracking._REACHED
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    from tests.helpers import tiny_cfg

    cfg = tiny_cfg(tmp_path, mlflow_server)
    assert tracking.ensure_experiment(cfg)
