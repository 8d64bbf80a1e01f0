"""`distilflow serve` faults, provoked for real on the real MLServer (from .venv-serve): the CLI
runs as `python -m pipeline serve` in its own process, with TMPDIR pointed at a test folder so
that its temp dirs can be counted, and gets real signals.

- SIGTERM (kill, `docker stop`, a pod's deletion) or SIGINT (Ctrl-C): the request in flight is
  answered, then MLServer and every process it started end, the port closes, the temp dirs go,
  exit 0; with a short --grace (or a second signal) a request that outlasts it is cut off and
  the stop stays bounded; a signal while MLServer starts stops it too;
- the port already in use (before MLServer starts, and taken while it starts): one line naming
  the port, exit 2, never `serving ...`;
- MLServer killed with -9: its orphaned workers are stopped too, one line, exit 2;
- an empty or whitespace-only text: a 400 naming its index, for the classifier and the tagger.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tests.test_serve import _save, _served

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
START_S = 180  # MLServer's import and model load, on a loaded 2-core machine
STOP_S = 30  # the default grace (15 s) + MLServer's own shutdown, under Kubernetes' 30 s
WORDS = "the quick brown fox jumps over a lazy dog " * 1600


@pytest.fixture(scope="module")
def cls_export(tiny_student_dir, tmp_path_factory) -> Path:
    """An export dir (its pyfunc/ saved as the export step saves it) of the tiny classifier."""
    out = tmp_path_factory.mktemp("faults-cls")
    _save(out / "export" / "pyfunc", tiny_student_dir, out, tagger=False)
    return out / "export"


@pytest.fixture(scope="module")
def tagger_pyfunc(tiny_tagger_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults-tagger")
    return _save(out / "pyfunc", tiny_tagger_dir, out, tagger=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Cli:
    """`python -m pipeline serve` in a subprocess; its stdout/stderr in files, its temps in tmp."""

    def __init__(self, root: Path, model: Path, port: int, *extra: str):
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True)
        self.out, self.err = root / "stdout.txt", root / "stderr.txt"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pipeline", "serve", "--config", str(TINY), "--model", str(model),
               "--port", str(port), *extra]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        self.port = port
        self._server: psutil.Process | None = None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def mlserver(self) -> psutil.Process | None:
        """MLServer, the CLI's child (remembered: the CLI may die before it, as it did on SIGTERM)."""
        if self._server is None:
            try:
                kids = psutil.Process(self.proc.pid).children()
            except psutil.NoSuchProcess:
                return None
            self._server = next((k for k in kids if "mlserver" in " ".join(k.cmdline())), None)
        return self._server

    def wait_serving(self) -> list[psutil.Process]:
        """Block until it prints `serving`; every process of its tree then (CLI first, MLServer second)."""
        deadline = time.monotonic() + START_S
        while "serving " not in self.stdout():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before serving: {self.stderr()[-2000:]}"
            assert time.monotonic() < deadline, f"not serving after {START_S} s"
            time.sleep(0.2)
        server = self.mlserver()
        return [psutil.Process(self.proc.pid), server, *server.children(recursive=True)]

    def metrics_url(self) -> str:
        (settings,) = self.tmp.glob("distilflow-serve-*/settings.json")
        return f"http://127.0.0.1:{json.loads(settings.read_text())['metrics_port']}/metrics"

    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/distilflow-tiny/infer"

    def finish(self, timeout: float = STOP_S) -> tuple[int, float]:
        """Exit code and seconds to it."""
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {timeout} s later: {self.stderr()[-2000:]}") from None
        return code, time.monotonic() - t0

    def kill(self) -> None:
        """Test cleanup: SIGKILL the CLI and whatever of MLServer's group is left."""
        server = self.mlserver()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if server is not None:
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.strip()]


@pytest.fixture()
def cli(tmp_path) -> Iterator[callable]:
    started = []

    def _start(model: Path, port: int, *extra: str) -> Cli:
        started.append(Cli(tmp_path / f"cli{len(started)}", model, port, *extra))
        return started[-1]

    yield _start
    for c in started:
        c.kill()


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _in_tmp(c: Cli) -> list[str]:
    """Live processes started from or working in the CLI's TMPDIR (MLServer's workers run in its folder)."""
    out = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        where = " ".join([*(p.info["cmdline"] or []), p.info["cwd"] or ""])
        if str(c.tmp) in where and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(f"{p.pid} {where[:80]}")
    return out


def _assert_nothing_left(c: Cli, procs: list[psutil.Process]) -> None:
    assert _alive(procs) == [] and _in_tmp(c) == []
    assert not _port_open(c.port), f"port {c.port} still answers"
    assert sorted(p.name for p in c.tmp.iterdir()) == []


def _in_flight(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rest_server_requests_in_progress{"))


def _slow_request(c: Cli, copies: int = 1) -> tuple[threading.Thread, dict]:
    """A 1,024-text batch of 64 KB texts (over a second on the tiny student) sent from a thread;
    returns once MLServer's metrics count it in progress."""
    from components.serve.codec import post

    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1024],
                                   "data": [WORDS[:65536]] * 1024}]}).encode()
    answers: dict = {}

    def send(i: int) -> None:
        try:
            answers[i] = post(c.infer_url(), body, timeout=120)[0]
        except Exception as err:  # noqa: BLE001 - a request cut off by the grace period, however it ends
            answers[i] = type(err).__name__

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(copies)]
    for t in threads:
        t.start()
    metrics, deadline = c.metrics_url(), time.monotonic() + 60
    while _in_flight(metrics) < copies:
        assert time.monotonic() < deadline and not answers, f"never in flight: {answers}"
        time.sleep(0.02)
    return threads, answers


# ---------------------------------------------------------------- stop signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_request_in_flight_and_leaves_nothing(cls_export, cli, sig):
    c = cli(cls_export, _free_port())
    procs = c.wait_serving()
    assert len(procs) >= 4  # the CLI, MLServer, its inference worker and multiprocessing's resource tracker
    threads, answers = _slow_request(c)
    c.proc.send_signal(sig)
    code, seconds = c.finish()
    for t in threads:
        t.join(timeout=5)
    assert answers == {0: 200}, "the request in flight was not answered"
    assert (code, c.error_lines()) == (0, [f"stopped by {sig.name}: MLServer (pid {procs[1].pid}) and its "
                                           f"{len(procs) - 2} child processes ended"])
    assert seconds < STOP_S
    _assert_nothing_left(c, procs)


def test_the_grace_period_bounds_the_stop(cls_export, cli):
    """Three batches queued behind one worker outlast --grace 1: the stop takes seconds, not their
    time, says that requests were cut off, and still leaves nothing. On the MLflow runtime: the
    lean one answers the three within the second (the grace is the launcher's, either way)."""
    c = cli(cls_export, _free_port(), "--grace", "1", "--runtime", "mlflow")
    procs = c.wait_serving()
    threads, answers = _slow_request(c, copies=3)
    c.proc.send_signal(signal.SIGTERM)
    code, seconds = c.finish()
    (line,) = c.error_lines()
    assert code == 0 and line.startswith("stopped by SIGTERM: MLServer") and line.endswith(
        "; requests still in flight were cut off after the 1 s grace (--grace)")
    assert seconds < 10
    _assert_nothing_left(c, procs)
    for t in threads:
        t.join(timeout=10)
    assert len(answers) == 3 and set(answers.values()) != {200}


def test_a_stop_signal_while_mlserver_starts_stops_it_too(cls_export, cli):
    """SIGTERM before the model is ready (a pod deleted while it starts): MLServer is stopped,
    nothing claims to serve, exit 0."""
    c = cli(cls_export, _free_port())
    deadline = time.monotonic() + 60
    while c.mlserver() is None:
        assert c.proc.poll() is None and time.monotonic() < deadline, c.stderr()
        time.sleep(0.01)
    procs = [psutil.Process(c.proc.pid), c.mlserver()]
    c.proc.send_signal(signal.SIGTERM)
    code, seconds = c.finish()
    assert (code, c.error_lines()) == (0, ["stopped by SIGTERM before serving; nothing left running"])
    assert "serving" not in c.stdout() and seconds < 15
    _assert_nothing_left(c, procs)


def test_a_second_signal_cuts_the_grace_short(cls_export, cli):
    """Kubernetes sends SIGKILL after its grace; a user presses Ctrl-C twice: the second signal ends
    the wait for in-flight requests (here --grace 120) and the stop is still complete."""
    c = cli(cls_export, _free_port(), "--grace", "120")
    procs = c.wait_serving()
    threads, answers = _slow_request(c, copies=3)
    c.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    c.proc.send_signal(signal.SIGINT)
    code, seconds = c.finish()
    (line,) = c.error_lines()
    assert code == 0 and line.startswith("stopped by SIGTERM: MLServer") and line.endswith(
        "; requests still in flight were cut off by a second signal")
    assert seconds < 10
    _assert_nothing_left(c, procs)


# ---------------------------------------------------------------- the port


class _Answers200(BaseHTTPRequestHandler):
    """Another server on the port, answering 200 to every path (the `ready` check included)."""

    def _ok(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _ok

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def squatter() -> Iterator[callable]:
    servers = []

    def _listen(port: int) -> ThreadingHTTPServer:
        servers.append(ThreadingHTTPServer(("127.0.0.1", port), _Answers200))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return servers[-1]

    yield _listen
    for s in servers:
        s.shutdown()
        s.server_close()


def _assert_refused_port(c: Cli, code: int, seconds: float) -> None:
    line = (f"error: --host 127.0.0.1 --port {c.port}: address already in use (pid {os.getpid()}: ")
    (got,) = c.error_lines()
    assert (code, got.startswith(line), got.endswith("; stop that server or pass another --port")) == (2, True, True), got
    assert "serving" not in c.stdout()
    assert seconds < 30
    assert sorted(p.name for p in c.tmp.iterdir()) == [] and _in_tmp(c) == []


def test_a_port_in_use_is_one_line_and_exit_2_before_anything_starts(cls_export, cli, squatter):
    port = _free_port()
    squatter(port)
    t0 = time.monotonic()
    c = cli(cls_export, port)
    code, _ = c.finish()
    _assert_refused_port(c, code, time.monotonic() - t0)


def test_a_port_taken_while_mlserver_starts_is_mlservers_bind_error(cls_export, cli, squatter):
    """The port is free when the CLI checks it and taken (by a server that answers `ready`) as soon
    as MLServer's process exists: MLServer logs its bind error and goes on running; the CLI reads
    it, stops MLServer and says so instead of serving what the other server answers."""
    port = _free_port()
    t0 = time.monotonic()
    c = cli(cls_export, port)
    while c.mlserver() is None:
        assert c.proc.poll() is None and time.monotonic() - t0 < 60, c.stderr()
        time.sleep(0.01)
    squatter(port)
    code, _ = c.finish(START_S)
    _assert_refused_port(c, code, time.monotonic() - t0)


# ---------------------------------------------------------------- MLServer dying

def test_mlserver_killed_takes_its_workers_with_it(cls_export, cli):
    c = cli(cls_export, _free_port())
    procs = c.wait_serving()
    os.kill(procs[1].pid, signal.SIGKILL)
    code, seconds = c.finish()
    (line,) = c.error_lines()
    assert code == 2 and line == (f"error: MLServer (pid {procs[1].pid}) was killed by SIGKILL while serving (out of "
                                  f"memory? see `dmesg`); stopped the {len(procs) - 2} child processes it left; start "
                                  "`distilflow serve` again")
    assert seconds < 10
    _assert_nothing_left(c, procs)


# ---------------------------------------------------------------- blank texts

BLANKS = {"empty": "", "spaces": "   ", "tabs and newlines": "\t\n \r", "zero-width space and BOM": "\u200b\ufeff",
          "ideographic space": "\u3000"}


@pytest.fixture(scope="module")
def cls_server(cls_export):
    yield from _served(cls_export / "pyfunc", "tiny-student")


@pytest.fixture(scope="module")
def tagger_server(tagger_pyfunc):
    yield from _served(tagger_pyfunc, "tiny-tagger")


@pytest.mark.parametrize("task", ["classifier", "tagger"])
def test_a_blank_text_is_a_400_naming_its_index(request, task):
    from components.serve.codec import V2Error, infer

    server = request.getfixturevalue("cls_server" if task == "classifier" else "tagger_server")
    for case, blank in BLANKS.items():
        with pytest.raises(V2Error) as err:
            infer(server.infer_url, ["alice met bob in paris", blank, "a late goal won the cup"])
        assert (err.value.status, err.value.reason) == (400, "text 1 is empty or only whitespace; send the text to "
                                                             "classify or tag, or leave it out of the batch"), case
    # Words after invisible characters are a text; the server goes on serving.
    rows = infer(server.infer_url, ["\u200b alice met bob", " x "])
    assert len(rows) == 2
