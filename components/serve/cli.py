"""`distilflow serve`: serve a registry reference or an export dir locally with MLServer (V2, HTTP
and gRPC) on the lean student runtime (default) or --runtime mlflow, optionally with MLServer's
adaptive batching, or print the InferenceService that serves it on KServe (--render-isvc).

Stopping, as Docker and Kubernetes stop a container: SIGTERM (kill, `docker stop`, a pod's
deletion) or SIGINT (Ctrl-C) lets in-flight requests finish (up to --grace seconds), stops
MLServer and every worker it started, removes the temp dirs and exits 0: a requested stop is
a success. A second signal cuts the grace short. Exit 2, one line on stderr, for what a user can
fix: the port already in use (checked before MLServer starts, and MLServer's own bind error),
a model that is not there, MLServer dying while it serves (its workers are stopped too).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig
from components.serve import isvc
from components.serve.server import GRACE_S, Server, StartCancelled, log_reason, shutdown, start

CHAMPION = "champion"  # the alias export moves (components/lib/publish/registry.py)
# What KServe's storage initializer downloads (a file: or mlflow-artifacts: location it cannot).
KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://", "hf://")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file:")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH, an MLflow model dir or an "
                             "export dir (its pyfunc/); default models:/<export.model_name>@champion")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (gRPC and metrics get free ports)")
    parser.add_argument("--workers", type=int, default=1, help="MLServer inference worker processes")
    parser.add_argument("--runtime", choices=["lean", "mlflow"], default="lean",
                        help="lean (default): a distilflow student's ONNX bundle straight from the V2 request; "
                             "mlflow: mlserver-mlflow and the pyfunc (any MLflow model, e.g. a teacher)")
    parser.add_argument("--max-batch-size", type=int, default=0, metavar="N",
                        help="MLServer adaptive batching: merge up to N concurrent requests (default 0: off)")
    parser.add_argument("--max-batch-time", type=float, default=0.0, metavar="S",
                        help="with --max-batch-size: the longest a request waits for others, in seconds")
    parser.add_argument("--name", default=None, help="model name in the V2 paths (default: the InferenceService name)")
    parser.add_argument("--grace", type=float, default=GRACE_S, metavar="S",
                        help="on SIGTERM or Ctrl-C: seconds in-flight requests get to finish before MLServer and its "
                             f"workers are killed (default {GRACE_S:.0f}; keep it under the pod's "
                             "terminationGracePeriodSeconds, 30 by default)")
    parser.add_argument("--render-isvc", action="store_true", help="print the KServe InferenceService YAML and exit")
    parser.add_argument("--storage-uri", default=None,
                        help="with --render-isvc: the exported model dir in object storage or a PVC "
                             "(default: where MLflow stored the version, when that is not a local path)")
    parser.add_argument("--namespace", default=isvc.NAMESPACE, help="with --render-isvc: the namespace")
    parser.add_argument("--isvc-protocol", choices=isvc.PROTOCOLS, default="v2",
                        help="with --render-isvc: v2 (REST, default) or grpc-v2 (MLServer's gRPC port, h2c)")
    parser.epilog = ("SIGTERM or SIGINT (Ctrl-C) stops it gracefully: in-flight requests finish (up to --grace), "
                     "MLServer and its workers end, temp dirs are removed, exit 0; a second signal hurries it. "
                     "Exit 2: a one-line error (port in use, no model, MLServer died).")


def resolve_model(ref: str, tracking_uri: str, dst: Path) -> Path:
    """A local MLflow model dir for ref: as is, an export dir's pyfunc/, or downloaded from MLflow
    (what KServe's storage initializer does with storageUri)."""
    local = Path(ref)
    if not ref.startswith(MLFLOW_SCHEMES) or local.exists():
        for cand in (local, local / "pyfunc"):
            if (cand / "MLmodel").exists():
                return cand
        raise UserError(f"--model {ref}: neither an MLflow model dir nor an export dir with pyfunc/MLmodel")
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst)))
    except MlflowException as err:
        raise UserError(f"--model {ref}: {str(err).splitlines()[0]} (tracking {tracking_uri})") from None
    if not (path / "MLmodel").exists():
        raise UserError(f"--model {ref}: downloaded to {path}, but it holds no MLmodel file")
    return path


def render(cfg: PipelineConfig, args, tracking_uri: str) -> str:
    """The InferenceService YAML for args.model (a registry reference pins the version it points at)."""
    ref = args.model or f"models:/{cfg.export.model_name}@{CHAMPION}"
    name, version, location = cfg.export.model_name, None, None
    if ref.startswith("models:/"):
        name, version, location = isvc.champion_version(ref, tracking_uri)
    storage = args.storage_uri or (location if location and location.startswith(KSERVE_SCHEMES) else None)
    if storage is None:
        raise UserError(f"--model {ref} is stored at {location or ref}, which a cluster cannot read: copy the model "
                        "dir to object storage and pass --storage-uri (e.g. s3://bucket/path)")
    model_ref = f"models:/{name}/{version}" if version else ref
    return isvc.to_yaml(isvc.render_isvc(name, storage, version, model_ref, args.namespace,
                                         runtime=getattr(args, "runtime", "lean"),
                                         protocol=getattr(args, "isvc_protocol", "v2")))


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived while the model is resolved (downloaded); a BaseException, as
    KeyboardInterrupt is, so that no `except Exception` in MLflow's download swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """SIGTERM and SIGINT while `distilflow serve` runs. Until quiet(), the first one raises
    StopRequested (nothing runs yet but a download); after it, a signal only sets flags that the
    code polls, so that none can land between starting MLServer and holding its Server (an
    orphan) or inside the shutdown. `requested` is set by the first signal, `hurry` by the next:
    cut the grace short. The handlers only set flags (Event.set from a handler is safe here: the
    main thread never waits on these events, it polls is_set). The previous handlers come back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = threading.Event()
        self.hurry = threading.Event()
        self.received: int | None = None
        self._raising = True
        self._previous: dict = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def quiet(self) -> None:
        self._raising = False

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.hurry.set()
            return
        self.received = signum
        self.requested.set()
        if self._raising:
            self._raising = False
            raise StopRequested(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works nowhere else
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _workers(server: Server, pids: list[int]) -> str:
    n = len([p for p in pids if p != server.pid])
    return f"{n} child process{'es' if n != 1 else ''}"


def _died(server: Server, pids: list[int], log: str) -> UserError:
    """The one line for an MLServer that ended while serving (its workers already stopped)."""
    code = server.proc.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    hint = " (out of memory? see `dmesg`)" if code == -signal.SIGKILL else f": {log_reason(log)}"
    return UserError(f"MLServer (pid {server.pid}) {how} while serving{hint}; stopped the {_workers(server, pids)} "
                     "it left; start `distilflow serve` again")


def _serve_until_stopped(server: Server, ref: str, model_dir: Path, stops: StopSignals, grace_s: float) -> None:
    """Wait until a stop signal or MLServer's end, then stop the whole server (the grace applies)."""
    log = ""
    try:
        print(f"serving {ref} ({model_dir}) as '{server.name}' at {server.infer_url} (pid {server.pid}; "
              f"gRPC on port {server.ports.get('grpc')}); Ctrl-C stops it\n"
              f"  curl -s {server.infer_url} -H 'Content-Type: application/json' -d "
              "'{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"some text\"]}]}'",
              flush=True)
        while not stops.requested.is_set() and server.alive():
            time.sleep(0.2)
        log = server.log_tail(20000)  # read before shutdown removes the folder
    finally:
        stopped = shutdown(server, grace_s, stops.hurry)
    if stops.requested.is_set():
        by = "by a second signal" if stopped.hurried else f"after the {grace_s:g} s grace (--grace)"
        cut = "" if stopped.drained else f"; requests still in flight were cut off {by}"
        print(f"stopped by {stops.name}: MLServer (pid {server.pid}) and its {_workers(server, stopped.pids)} "
              f"ended{cut}", file=sys.stderr, flush=True)
    elif server.proc.returncode not in (0, -signal.SIGTERM):
        raise _died(server, stopped.pids, log)


def serve_command(cfg: PipelineConfig, args) -> None:
    from components.lib.tracking import runs as tracking

    uri = tracking.tracking_uri(cfg)
    if args.render_isvc:
        print(render(cfg, args, uri), end="")
        return None
    ref = args.model or f"models:/{cfg.export.model_name}@{CHAMPION}"
    name = args.name or isvc.isvc_name(cfg.export.model_name)
    grace_s = getattr(args, "grace", GRACE_S)
    with StopSignals() as stops:
        try:
            with tempfile.TemporaryDirectory(prefix="distilflow-model-") as tmp:
                model_dir = resolve_model(ref, uri, Path(tmp))
                stops.quiet()
                server = start(model_dir, name=name, host=args.host, port=args.port, workers=args.workers,
                               cancel=stops.requested, runtime=args.runtime,
                               batch=(args.max_batch_size, args.max_batch_time))
                _serve_until_stopped(server, ref, model_dir, stops, grace_s)
        except (StopRequested, StartCancelled):  # before serving: start() stopped what it started
            print(f"stopped by {stops.name} before serving; nothing left running", file=sys.stderr, flush=True)
    return None
