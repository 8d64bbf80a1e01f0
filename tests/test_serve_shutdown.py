"""server.shutdown's drain, on real processes and sockets but without MLServer (fast): it waits for
the metrics gauge to read 0, and a metrics endpoint that does not answer (MLServer's event loop
busy parsing a 64 MB body, as on a loaded CI machine) is not "nothing in flight"."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.serve.server import IN_PROGRESS, Server, in_flight, shutdown


class _Gauge(BaseHTTPRequestHandler):
    """/metrics with the in-progress gauge at the server's `value` (a list: [n])."""

    def do_GET(self) -> None:
        body = f'{IN_PROGRESS}{{method="POST",path="/v2/models/m/infer"}} {self.server.value[0]}\n'.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def sleeper(tmp_path):
    """A process in its own session standing in for MLServer (SIGTERM ends it)."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _server(proc, tmp_path, metrics_port: int) -> Server:
    return Server(proc=proc, url="http://127.0.0.1:1", name="m", folder=tmp_path, log=tmp_path / "log",
                  ports={"metrics": metrics_port})


def test_a_gauge_that_reaches_zero_is_drained(sleeper, tmp_path):
    gauge = ThreadingHTTPServer(("127.0.0.1", 0), _Gauge)
    gauge.value = [2]
    threading.Thread(target=gauge.serve_forever, daemon=True).start()
    threading.Timer(0.5, lambda: gauge.value.__setitem__(0, 0)).start()
    try:
        server = _server(sleeper, tmp_path, gauge.server_address[1])
        assert in_flight(server) == 2
        t0 = time.monotonic()
        stopped = shutdown(server, grace_s=10.0)
        seconds = time.monotonic() - t0
    finally:
        gauge.shutdown()
    assert stopped.drained and not stopped.hurried and 0.4 < seconds < 5
    assert sleeper.poll() is not None


def test_a_metrics_endpoint_that_never_answers_is_not_drained(sleeper, tmp_path):
    with socket.socket() as mute:  # accepts connections (the kernel's backlog), never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        server = _server(sleeper, tmp_path, mute.getsockname()[1])
        assert in_flight(server) is None
        t0 = time.monotonic()
        stopped = shutdown(server, grace_s=2.0)
        seconds = time.monotonic() - t0
    assert not stopped.drained and 1.9 < seconds < 10
    assert sleeper.poll() is not None


def test_a_server_without_a_metrics_port_stops_at_once(sleeper, tmp_path):
    server = Server(proc=sleeper, url="http://127.0.0.1:1", name="m", folder=tmp_path, log=tmp_path / "log")
    t0 = time.monotonic()
    stopped = shutdown(server, grace_s=10.0)
    assert stopped.drained and time.monotonic() - t0 < 5 and sleeper.poll() is not None
