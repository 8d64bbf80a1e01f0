"""MLflow at the edges: one nested run per step, model references, the tracking URI.

The embedded default is a sqlite store in the run's work_dir (``mlflow.db`` + ``mlartifacts/``);
``$MLFLOW_TRACKING_URI`` or ``tracking.uri`` point at a shared server instead. A step nests
under ``tracking.parent_run_id`` when the pipeline set one, and tags the KFP run id. A server
is probed once per process before first use (check_server), so a down or failing one costs
seconds and one line, not MLflow's minutes of retries and a traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.lib.core.env import scoped_env
from components.lib.core.errors import UserError
from components.lib.settings.cli import (
    check_writable,
)
from components.lib.settings.config import PipelineConfig
from components.lib.tracking.store import (  # noqa: F401  (tracking_uri: also runs.tracking_uri for its callers)
    check_not_file_store,
    check_store_dir,
    disk_faults_named,
    sqlite_path,
    store_fault,
    tracking_uri,
)

log = logging.getLogger(__name__)
MODEL_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# ---------------------------------------------------------------- is the server there?

PROBE_SECONDS = 15.0  # the whole probe, retries included
PROBE_DELAYS = (1.0, 2.0, 4.0)  # between tries, while a server may be (re)starting
_REACHED: set[str] = set()  # URIs that answered once in this process: probed no more


def check_server(uri: str) -> None:
    """Raise a one-line UserError unless the http(s) tracking server at uri answers a cheap call.

    MLflow's own client retries 7 times with backoff (~4 minutes) and 500 counts as transient,
    so each try here runs with its retries off and a short timeout, and the loop bounds the total.
    """
    if not uri.startswith(("http://", "https://")) or uri in _REACHED:
        return
    import mlflow

    start, tries, delays = time.monotonic(), 0, iter(PROBE_DELAYS)
    while True:
        tries += 1
        left = PROBE_SECONDS - (time.monotonic() - start)
        try:
            with scoped_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, min(5, int(left))))):
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
            _REACHED.add(uri)
            return
        except Exception as err:  # MlflowException wrapping requests' errors; classified below
            transient, why = _probe_failure(err)
        spent, delay = time.monotonic() - start, next(delays, None)
        if not transient or delay is None or spent + delay >= PROBE_SECONDS:
            break
        log.debug("MLflow at %s: %s; retrying in %.0fs", uri, why, delay)
        time.sleep(delay)
    where = f"MLflow tracking server {_redacted(uri)}"
    if transient:
        state, fix = ("failing", "see its log") if why.startswith("HTTP") else ("unreachable", "start it")
        raise UserError(f"{where} {state} ({why}; {tries} tries in {spent:.0f}s): {fix}, "
                        "set tracking.uri / MLFLOW_TRACKING_URI, or tracking.enabled=false")
    if why in ("HTTP 401", "HTTP 403"):
        raise UserError(f"{where} refused the request ({why}): set MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, or tracking.enabled=false")
    raise UserError(f"{where} failed a search-experiments call ({why}): check tracking.uri / "
                    "MLFLOW_TRACKING_URI, or set tracking.enabled=false")


def _probe_failure(err: Exception) -> tuple[bool, str]:
    """(worth retrying, a few words): refused, timed out or 5xx are transient; 4xx and the rest are not."""
    import requests

    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(c).__name__ for c in chain}
    if "ConnectionRefusedError" in names:
        return True, "connection refused"
    if names & {"ConnectTimeoutError", "ReadTimeoutError", "TimeoutError"} or any(isinstance(c, requests.Timeout) for c in chain):
        return True, "no answer in time"
    if "NameResolutionError" in names or "gaierror" in names:
        return False, "host name not found"
    if any(isinstance(c, requests.exceptions.SSLError) for c in chain):
        return False, "TLS error"
    if retried := [c for c in chain if type(c).__name__ == "ResponseError"]:  # urllib3: too many 5xx/429
        codes = [w for w in str(retried[0]).split() if w.isdigit()]
        return True, f"HTTP {codes[0]}" if codes else "error responses"
    if any(isinstance(c, requests.ConnectionError) for c in chain):
        return True, "connection failed"
    status = getattr(err, "get_http_status_code", lambda: None)()
    if isinstance(status, int) and status != 500:  # MLflow maps an error without a status to 500
        return status >= 500, f"HTTP {status}"
    return False, str(err).splitlines()[0][:200]


def _redacted(uri: str) -> str:
    """The URI without user:password@, fit for an error message."""
    scheme, sep, rest = uri.partition("://")
    host, at, path = rest.partition("@")
    return f"{scheme}{sep}***@{path}" if at and "/" not in host else uri


def _artifact_location(cfg: PipelineConfig, uri: str) -> str | None:
    # A local sqlite store keeps its artifacts beside it; a server decides for itself.
    if uri.startswith("sqlite:///") or uri.startswith("file:"):
        return (Path(cfg.work_dir).resolve() / "mlartifacts").as_uri()
    return None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def ensure_experiment(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created if missing)."""
    uri = tracking_uri(cfg)
    check_not_file_store(cfg, uri)
    check_server(uri)
    db = sqlite_path(uri)
    fresh = db is not None and not db.exists()
    if db is not None:
        check_store_dir(cfg, uri, db)
    try:
        return _experiment_id(cfg, uri)
    except Exception as err:
        fault = store_fault(cfg, err, [db.parent] if db else [])
        if fault is None:
            raise
        if fresh and db is not None:  # half-migrated, it would break every later run: start afresh next time
            for leftover in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
        raise fault from err


def _experiment_id(cfg: PipelineConfig, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=_artifact_location(cfg, uri))
    except Exception:  # created concurrently by a sibling step
        exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


class StepTracker:
    """Thin face over an active MLflow run; every call is a no-op when tracking is disabled."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        import mlflow

        flat = {k: ("" if v is None else str(v)[:6000]) for k, v in _flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run_id is None:
            return
        import mlflow

        flat = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if flat:
            mlflow.log_metrics(flat, step=step)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.log_artifacts(str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.log_artifact(str(local_file), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _write_dir(cfg: PipelineConfig, step: str) -> tuple[Path, str] | None:
    """Where `step` makes its files (its output's parent: the atomic writers' temps go there; the
    pseudo dir itself, which pseudo-labelling fills) and the setting that chose it; None if unknown."""
    if step.startswith("distill-student-"):
        return cfg.student_dir(step[len("distill-student-"):]).parent, _dir_key(cfg.student.output_dir, "student")
    outputs = {
        "prepare-data": (cfg.data_dir.parent, cfg.data.output_dir, "data"),
        "finetune-teacher": (cfg.teacher_dir.parent, cfg.teacher.output_dir, "teacher"),
        "pseudo-label-transfer-set": (cfg.pseudo_dir, cfg.transfer.output_dir, "transfer"),
        "evaluate": (cfg.eval_dir.parent, cfg.evaluate.output_dir, "evaluate"),
        "export": (cfg.export_dir.parent, cfg.export.output_dir, "export"),
    }
    if step not in outputs:
        return None
    where, explicit, section = outputs[step]
    return where, _dir_key(explicit, section)


def _dir_key(explicit: str | None, section: str) -> str:
    return f"{section}.output_dir" if explicit else "work_dir"


@contextlib.contextmanager
def step_run(cfg: PipelineConfig, step: str) -> Iterator[StepTracker]:
    """An MLflow run for one step, nested under the pipeline's parent run when there is one.

    First the place the step writes is probed (cli.check_writable), so a full, read-only or
    forbidden disk is one line before any work; a disk fault later in the step is one line too."""
    out = _write_dir(cfg, step)
    if out is not None:
        check_writable(*out)
    places = [out[0]] if out else []
    if not cfg.tracking.enabled:
        with disk_faults_named(cfg, places):
            yield StepTracker(None)
        return
    import mlflow

    exp_id = ensure_experiment(cfg)
    tags = {"distilflow.step": step, "distilflow.pipeline": cfg.name}
    if cfg.tracking.kfp_run_id:
        tags["kfp.run_id"] = cfg.tracking.kfp_run_id
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    # Our own run object, not the global active-run stack, so a step called inside another
    # active run (tests, notebooks) still nests where the config says.
    while mlflow.active_run() is not None:
        mlflow.end_run()
    with disk_faults_named(cfg, places):
        run = mlflow.start_run(experiment_id=exp_id, run_name=step, tags=tags)
    status = "FAILED"
    # The step's own log records (INFO and up, every logger) go to its run as logs/<step>.log,
    # however quiet the terminal is (`distilflow run` without --verbose shows one line per step).
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with disk_faults_named(cfg, places):
            yield StepTracker(run.info.run_id)
        status = "FINISHED"
    finally:
        root.removeHandler(handler)
        _close_run(cfg, run.info.run_id, step, buffer.getvalue(), status, places)


def _close_run(cfg: PipelineConfig, run_id: str, step: str, log_text: str, status: str, places: list[Path]) -> None:
    """Log the step's log and end its run. After a failed step a failing store (a full disk, say)
    only warns: the step's own error is the one to see, not the store's on top of it."""
    import mlflow

    try:
        with disk_faults_named(cfg, places):
            try:
                mlflow.log_text(log_text, f"logs/{step}.log", run_id=run_id)
            finally:
                mlflow.end_run(status=status)
    except Exception as err:
        if status == "FINISHED":
            raise
        log.warning("MLflow run %s of %s not closed: %s", run_id, step, str(err).splitlines()[0][:200])


def start_parent_run(cfg: PipelineConfig, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Create (and leave open) the pipeline's parent run; steps nest under its id."""
    import mlflow

    exp_id = ensure_experiment(cfg)
    client = mlflow.MlflowClient(tracking_uri(cfg))
    with disk_faults_named(cfg):
        run = client.create_run(exp_id, run_name=run_name or cfg.name,
                                tags={"distilflow.pipeline": cfg.name, **(tags or {})})
    return run.info.run_id


def find_or_start_parent_run(cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The parent run tagged kfp.run_id=<id>, created by whichever step of that KFP run comes first.

    On a cluster no CLI process spans the run, so steps meet on the tag. Should two steps race
    to create it, both then pick the oldest tagged run, so they still nest under the same one.
    """
    import mlflow

    exp_id = ensure_experiment(cfg)
    client = mlflow.MlflowClient(tracking_uri(cfg))
    query = f"tags.`kfp.run_id` = '{kfp_run_id}' and tags.`distilflow.role` = 'parent'"

    def oldest() -> str | None:
        runs = client.search_runs([exp_id], query, order_by=["attributes.start_time ASC"], max_results=1)
        return runs[0].info.run_id if runs else None

    if (found := oldest()) is not None:
        return found
    start_parent_run(cfg, tags={"kfp.run_id": kfp_run_id, "distilflow.role": "parent"})
    return oldest() or ""


def end_parent_run(cfg: PipelineConfig, run_id: str, ok: bool) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri(cfg)).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def resolve_model_ref(ref: str | Path, cfg: PipelineConfig) -> Path | str:
    """A local dir, an MLflow URI (downloaded), a packaged teacher, or a hub name (returned as is)."""
    ref = str(ref)
    from components.lib.sources.assets import packaged_model_dir

    if (packaged := packaged_model_dir(ref)) is not None:
        return packaged
    if ref.startswith(MODEL_URI_SCHEMES):
        import mlflow

        check_server(tracking_uri(cfg))
        # runs:/<id>/<name> of an MLflow 3 logged model is fetched through a models:/ repo that
        # reads the *global* tracking URI, so set it too (else the download finds nothing).
        mlflow.set_tracking_uri(tracking_uri(cfg))
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri(cfg))
        except Exception as err:  # MlflowException, connection errors: a user-facing problem
            raise UserError(f"{ref}: cannot download model from MLflow ({str(err).splitlines()[0]})") from None
        return _model_dir_inside(Path(local))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{ref}: expected a model directory, found a file")
        return path
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UserError(f"{ref}: model directory not found")
    return ref  # a hub name such as bert-base-uncased; transformers resolves it


def resolve_teacher(cfg: PipelineConfig) -> Path | str:
    """The teacher the distillation steps use: transfer.teacher if set, else the fine-tuned teacher dir."""
    if cfg.transfer.teacher:
        return resolve_model_ref(cfg.transfer.teacher, cfg)
    if not (cfg.teacher_dir / "config.json").exists():
        raise UserError(f"{cfg.teacher_dir}: no fine-tuned teacher (run finetune-teacher or set transfer.teacher)")
    return cfg.teacher_dir


def _model_dir_inside(root: Path) -> Path:
    """MLflow model folders keep the HF dir one level down (e.g. model/ or components/)."""
    if (root / "config.json").exists():
        return root
    for child in sorted(root.rglob("config.json")):
        if (child.parent / "model.safetensors").exists() or (child.parent / "pytorch_model.bin").exists():
            return child.parent
    return root
