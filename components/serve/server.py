"""Start, wait for and stop a local MLServer for one MLflow model, from the serving environment
(.venv-serve; MLServer pins its own fastapi and pandas, so it cannot share the pipeline's venv),
with one of distilflow's two runtimes (copied into the model folder): "lean" (lean_runtime.py as
distilflow_lean.py: a student's bundle straight into ONNX Runtime) or "mlflow" (runtime.py as
distilflow_runtime.py: mlserver-mlflow, what KServe runs for `modelFormat: mlflow`, plus checks).

A server is one process group (its own session): `mlserver start` plus its inference-pool
worker(s) and multiprocessing's resource tracker. stop() ends it the way Kubernetes ends a pod,
but without losing requests: MLServer 1.7's own SIGTERM handler closes its worker pool first and
its HTTP server second, so a request in flight at that moment never gets an answer (measured:
the client hangs, MLServer too). So stop() first waits, up to the grace period, until MLServer's
metrics report no REST request in progress, then sends SIGTERM, then SIGKILLs the whole group:
workers whose MLServer died (kill -9, OOM) are orphans outside its process tree, but never
outside its group.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from components.lib.core.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVE_VENV = PROJECT_ROOT / ".venv-serve"
# --runtime: module file here -> the class MLServer loads (both files go into the model folder).
RUNTIMES = {"lean": "distilflow_lean.DistilflowLeanRuntime", "mlflow": "distilflow_runtime.DistilflowRuntime"}
MODULES = {"runtime.py": "distilflow_runtime.py", "lean_runtime.py": "distilflow_lean.py"}
START_TIMEOUT_S = 180.0
GRACE_S = 15.0  # in-flight requests' time to finish; under Kubernetes' default terminationGracePeriodSeconds (30)
TERM_S = 5.0  # MLServer's own shutdown after SIGTERM (it gives its workers parallel_workers_timeout, 5 s)
FAILED_START_GRACE_S = 2.0  # nothing is served yet; MLServer whose HTTP bind failed ignores SIGTERM
IN_PROGRESS = "rest_server_requests_in_progress"  # starlette_exporter's gauge in MLServer's /metrics
# uvicorn (REST and metrics servers) and grpc, when the address is taken.
BIND_FAILED = (re.compile(r"error while attempting to bind on address \('([^']*)', (\d+)\): (.*)"),
               re.compile(r"Failed to bind to address (\S+?):(\d+);()"))


class StartCancelled(Exception):
    """start()'s cancel event was set before the model was ready; what it started is stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listener_of(port: int) -> str:
    """'pid N: cmdline' of the process listening on port, or '' when it cannot be told."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid}: {' '.join(psutil.Process(conn.pid).cmdline())[:80]}"
    except (psutil.Error, OSError):
        pass
    return ""


def check_port(host: str, port: int) -> None:
    """UserError unless host:port can be bound now, tried as uvicorn binds it (SO_REUSEADDR, so a
    closed server's TIME_WAIT sockets do not count); MLServer would otherwise start, log the bind
    error and keep running, while the ready check reached whatever holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as err:
        raise UserError(_bind_message(host, port, err.errno, err.strerror or str(err))) from None


def _bind_message(host: str, port: int, code: int | None, reason: str) -> str:
    where = f"--host {host} --port {port}"
    if code == errno.EADDRINUSE:
        holder = listener_of(port)
        return (f"{where}: address already in use{f' ({holder})' if holder else ''}; "
                "stop that server or pass another --port")
    if code == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root); pass a --port above 1023"
    if code == errno.EADDRNOTAVAIL:
        return f"{where}: no such address on this machine; pass --host 127.0.0.1, 0.0.0.0 or one of its addresses"
    return f"{where}: cannot listen there ({reason}); pass another --host or --port"


def serve_venv() -> Path:
    """The serving environment: $DISTILFLOW_SERVE_VENV, else .venv-serve beside this project."""
    venv = Path(os.environ.get("DISTILFLOW_SERVE_VENV") or SERVE_VENV)
    if not (venv / "bin" / "mlserver").exists():
        raise UserError(f"{venv}: no MLServer there; build the serving environment with `make serve-setup`")
    return venv


def write_model_folder(model_dir: Path, folder: Path, name: str, host: str, ports: dict[str, int],
                       workers: int = 1, extra: dict | None = None, runtime: str = "lean",
                       batch: tuple[int, float] = (0, 0.0)) -> Path:
    """An MLServer model folder: settings.json, model-settings.json and the runtime modules; batch is
    MLServer's adaptive batching (max_batch_size, max_batch_time in s; off below 2 or at 0 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"host": host, "http_port": ports["http"], "grpc_port": ports["grpc"], "metrics_port": ports["metrics"],
                "parallel_workers": workers, "debug": False, "metrics_dir": str(folder / ".metrics"),
                "environments_dir": str(folder / ".envs")}
    model = {"name": name, "implementation": RUNTIMES[runtime], "max_batch_size": batch[0], "max_batch_time": batch[1],
             "parameters": {"uri": str(Path(model_dir).resolve()), "extra": extra or {}}}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n")
    for src, dst in MODULES.items():
        shutil.copy2(Path(__file__).with_name(src), folder / dst)
    return folder


@dataclass
class Server:
    """A running MLServer: its process (group and session leader), base URL, model name, log file
    and ports (http, grpc, metrics)."""

    proc: subprocess.Popen
    url: str
    name: str
    folder: Path
    log: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    @property
    def metrics_url(self) -> str | None:
        return f"{self.url.rsplit(':', 1)[0]}:{self.ports['metrics']}/metrics" if "metrics" in self.ports else None

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
          timeout_s: float = START_TIMEOUT_S, env: dict[str, str] | None = None,
          cancel: threading.Event | None = None, runtime: str = "lean", batch: tuple[int, float] = (0, 0.0)) -> Server:
    """Start MLServer on host:port (a free port when None) and return once the model is ready.
    A port already taken is a UserError before anything starts (and, if another process takes it
    while MLServer starts, as soon as MLServer logs its bind error). cancel being set stops the
    start (StartCancelled): the CLI's SIGTERM, polled, never raised between Popen and the Server."""
    model_dir = Path(model_dir)
    if not (model_dir / "MLmodel").exists():
        raise UserError(f"{model_dir}: not an MLflow model dir (no MLmodel file)")
    venv = serve_venv()
    if cancel is not None and cancel.is_set():
        raise StartCancelled(name)
    if port is not None:
        check_port(host, port)
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="distilflow-serve-")
        folder = Path(tmp.name)
    ports = {"http": port or free_port(host), "grpc": free_port(host), "metrics": free_port(host)}
    write_model_folder(model_dir, folder, name, host, ports, workers, extra, runtime, batch)
    log = folder / "server.log"
    # ORT_DISABLE_TELEMETRY: onnxruntime 1.32's telemetry would leave a session file ($TMPDIR/.ses) behind.
    run_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "ORT_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
    run_env.pop("PYTHONPATH", None)  # the model loads its own `components` (code_paths), never this repo's
    try:
        with open(log, "wb") as out:
            # Own session: the server and its workers form one process group we can account for and stop.
            proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(folder)], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=folder, env=run_env, start_new_session=True)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    server = Server(proc, f"http://{url_host}:{ports['http']}", name, folder, log, tmp, ports, host)
    try:
        wait_ready(server, timeout_s, cancel)
    except BaseException:
        stop(server, grace_s=FAILED_START_GRACE_S)
        raise
    return server


NOISE = ("CancelledError", "SystemExit", "KeyboardInterrupt")  # how asyncio and uvicorn unwind, not the cause


def log_reason(text: str) -> str:
    """The last error of an MLServer log, one line: an exception's message, else an ERROR record."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line) and line.split(":")[0].split(".")[-1] not in NOISE:
            return line[:240]
    for line in reversed(lines):
        if (" ERROR " in line or line.startswith("ERROR:")) and "Traceback" not in line:
            return line[:240]
    return "no error in its log"


def bind_failure(server: Server, text: str) -> str | None:
    """The one-line error for a bind failure MLServer logged (uvicorn and grpc go on without it)."""
    kinds = {p: k for k, p in server.ports.items()}
    for pattern in BIND_FAILED:
        found = pattern.search(text)
        if found:
            port = int(found.group(2))
            if kinds.get(port, "http") == "http":
                return _bind_message(server.host, port, errno.EADDRINUSE, found.group(3))
            return (f"MLServer's {kinds[port]} port {port} (picked free just before) was taken by another process "
                    "as it started; run it again")
    return None


def _listens(pid: int, port: int) -> bool:
    """Whether process pid has a listening socket on port: a ready answer from anyone else is not ours."""
    import psutil

    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


def wait_ready(server: Server, timeout_s: float = START_TIMEOUT_S, cancel: threading.Event | None = None) -> None:
    ready = f"{server.url}/v2/models/{server.name}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise StartCancelled(server.name)
        text = server.log_tail(20000)
        failed = bind_failure(server, text)
        if failed:
            raise UserError(failed)
        if not server.alive():
            raise UserError(f"MLServer exited with code {server.proc.returncode} before the model was ready: "
                            f"{log_reason(text)}")
        if "Couldn't load model" in text:
            raise UserError(f"MLServer could not load {server.name}: {log_reason(text)}; "
                            "check the model dir (or export it again)")
        if _status(ready) == 200 and _listens(server.pid, server.ports.get("http", -1)):
            return
        time.sleep(0.3)
    raise UserError(f"MLServer not ready after {timeout_s:.0f} s: {log_reason(server.log_tail(20000))}")


def process_tree(pid: int) -> list:
    """psutil.Process objects of pid and all its descendants (those still alive)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_group(pgid: int) -> list:
    """psutil.Process objects in process group pgid: also the workers whose MLServer died, which
    init adopted and which are no longer in its tree."""
    import psutil

    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


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


def in_flight(server: Server) -> int | None:
    """REST requests MLServer is handling now (its metrics gauge), None when it cannot tell."""
    url = server.metrics_url
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            text = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(IN_PROGRESS + "{") or line.startswith(IN_PROGRESS + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _wait(until, deadline: float, hurry: threading.Event | None, step: float = 0.1) -> bool:
    """Poll until() every step seconds up to deadline (or hurry being set); its last answer."""
    while not until():
        if time.monotonic() >= deadline or (hurry is not None and hurry.is_set()):
            return False
        time.sleep(step)
    return True


@dataclass
class Stopped:
    """What stop() did: the PIDs that were running, whether in-flight requests all finished (else
    whether a second signal, hurry, cut them off rather than the grace period) and what had to be
    SIGKILLed."""

    pids: list[int]
    drained: bool = True
    hurried: bool = False
    killed: list[int] = field(default_factory=list)


def shutdown(server: Server, grace_s: float = GRACE_S, hurry: threading.Event | None = None) -> Stopped:
    """Stop the server and every process of its group: wait (up to grace_s, or until hurry is set)
    for in-flight requests, SIGTERM MLServer and give it TERM_S to stop its workers, then SIGKILL
    whatever of the group or tree is left; reap MLServer and remove its temp folder."""
    import psutil

    tree = {p.pid: p for p in [*process_tree(server.pid), *process_group(server.pid)]}
    deadline = time.monotonic() + grace_s
    drained = True
    if server.alive():
        # A metrics read that fails (MLServer's loop busy parsing a large body) is not "none in flight".
        drained = _wait(lambda: not server.metrics_url or not server.alive() or in_flight(server) == 0, deadline, hurry)
        if server.alive():
            server.proc.send_signal(signal.SIGTERM)
            term_deadline = max(deadline, time.monotonic() + min(TERM_S, grace_s))
            _wait(lambda: not server.alive(), term_deadline, hurry)
    # A live MLServer stops its own workers; a dead one's are orphans, never stopped by anyone.
    left = process_group(server.pid) + [p for p in tree.values() if p.is_running()]
    left = list({p.pid: p for p in left}.values())
    killed = []
    for p in left:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                killed.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5.0)
    if server.alive():
        server.proc.kill()
    server.proc.wait(timeout=5.0)
    if server._tmp is not None:
        server._tmp.cleanup()
        server._tmp = None
    return Stopped(sorted(tree), drained, hurry is not None and hurry.is_set(), killed)


def stop(server: Server, grace_s: float = GRACE_S, hurry: threading.Event | None = None) -> list[int]:
    """Stop the server by PID and every child it started; returns the PIDs that were running."""
    return shutdown(server, grace_s, hurry).pids
