"""`distilflow run`: the whole DAG under kfp.local (SubprocessRunner in this venv, or DockerRunner
on the project image), one MLflow parent run around it, a line per step on the terminal
(console.py), and the summary table at the end (summary.py). The DAG itself is pipeline.py's: it
comes in as `build_pipeline`, so nothing here imports the CLI module.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from components.lib.contracts.files import atomic_dir
from components.lib.core.env import scoped_env
from components.lib.core.errors import UserError
from components.lib.settings.config import PROJECT_ROOT, PipelineConfig, config_to_json
from components.lib.tracking import runs as tracking
from components.lib.tracking.fingerprint import cache_salts
from components.runner.console import ANSI, RunConsole
from components.runner.summary import run_footer, summary_table

FINALIZER = "close-parent-run"  # the exit handler's task: bookkeeping, not a step
PUBLISH = "publish-outputs"  # kfp.local only: where evaluate's and export's outputs are


def _copy_dir(src: Path, dst: Path) -> None:
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def run_local(cfg: PipelineConfig, build_pipeline: Callable, runner: str = "subprocess", verbose: bool = True) -> dict:
    """The whole DAG (`build_pipeline(cfg, local=True, cache_salts=...)`, pipeline.py's) under
    kfp.local; returns what it wrote (also <work_dir>/last_run.json). verbose=False: one line per
    step on the terminal, kfp.local's full log in <work_dir>/kfp/<run_id>.log."""
    work = Path(cfg.work_dir).resolve()
    cfg = cfg.with_overrides({"work_dir": str(work)})  # steps (and containers) see one absolute path
    run_id = f"local-{uuid.uuid4().hex[:12]}"
    published = work / "kfp" / f"outputs-{run_id}.json"
    with scoped_env(DISTILFLOW_KFP_RUN_ID=run_id, DISTILFLOW_PARENT_RUN_ID=None, DISTILFLOW_OUTPUTS_FILE=str(published),
                     PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))):
        return _run_local(cfg, build_pipeline, runner, work, run_id, verbose)


def _run_local(cfg: PipelineConfig, build_pipeline: Callable, runner: str, work: Path, run_id: str, verbose: bool) -> dict:
    from kfp import local

    parent = None
    if not verbose:
        import mlflow  # noqa: F401  (configures its loggers on import: quieten them after that)

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up lines, in this process
    if cfg.tracking.enabled:
        parent = tracking.start_parent_run(cfg, run_name=f"{cfg.name} {run_id}", tags={
            "kfp.run_id": run_id, "distilflow.role": "parent", "distilflow.runner": runner})
        os.environ["DISTILFLOW_PARENT_RUN_ID"] = parent
    local.init(runner=_kfp_runner(runner, work), pipeline_root=str(work / "kfp"),
               enable_caching=cfg.kubernetes.caching, raise_on_error=True)
    salts = cache_salts(cfg) if cfg.kubernetes.caching else None
    pipeline_fn = build_pipeline(cfg, local=True, cache_salts=salts)
    (work / "kfp").mkdir(parents=True, exist_ok=True)
    task_log = RunConsole(work / "kfp" / f"{run_id}.log", verbose, hidden=(FINALIZER, PUBLISH),
                          repeats={"pseudo-label-transfer-set": cfg.transfer.num_shards})
    start = time.perf_counter()
    ok = False
    try:
        outputs = _execute(cfg, pipeline_fn, task_log, run_id, verbose)
        ok = True
    finally:
        if parent and not ok:
            tracking.end_parent_run(cfg, parent, ok=False)
    return _finish(cfg, work, run_id, runner, parent, outputs, task_log, time.perf_counter() - start)


def _kfp_runner(runner: str, work: Path):
    from kfp import local

    if runner != "docker":
        return local.SubprocessRunner(use_venv=False)
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        raise UserError("--runner docker: no Docker engine (set DOCKER_HOST, e.g. unix:///tmp/podman.sock)")
    import docker

    # work_dir holds the sqlite MLflow store the steps log to; kfp mounts only pipeline_root itself.
    # The image runs as UID 1000; run as the host user so the containers can write the
    # bind-mounted work_dir (and its files stay the user's).
    return local.DockerRunner(
        user=f"{os.getuid()}:{os.getgid()}",
        mounts=[docker.types.Mount(target=str(work), source=str(work), type="bind")],
        environment={k: os.environ[k] for k in ("DISTILFLOW_KFP_RUN_ID", "DISTILFLOW_PARENT_RUN_ID",
                                                "DISTILFLOW_OUTPUTS_FILE") if k in os.environ},
    )


def _execute(cfg: PipelineConfig, pipeline_fn, task_log: RunConsole, run_id: str, verbose: bool) -> dict:
    """Run the pipeline with every task's output going through the console; -> the published outputs."""
    root = logging.getLogger()
    root.addFilter(task_log)
    level = root.level
    root.setLevel(logging.INFO)  # kfp.local logs its cache hits at INFO on the root logger
    # kfp.local indents print() by swapping builtins.print per task; tasks running in parallel
    # threads can restore each other's swap and leave it indented for the rest of the process.
    print_fn = builtins.print
    builtins.print = task_log.write
    if not verbose:
        print_fn(f"running {cfg.name} under kfp.local (run {run_id}); full log: {task_log.log_path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline_fn(config_json=config_to_json(cfg.with_overrides({"tracking.parent_run_id": None})))
        published = Path(os.environ["DISTILFLOW_OUTPUTS_FILE"])
        outputs = json.loads(published.read_text())
        published.unlink()
        return outputs
    except RuntimeError as err:
        failed = task_log.unfinished()
        if not verbose:
            for task in failed:
                print_fn(f"--- the end of {task}'s log ---\n{task_log.tail(task)}", file=sys.stderr)
        where = "above" if verbose else f"above, whole: {task_log.log_path}"
        raise UserError(f"pipeline {cfg.name} failed {_why(err, failed, task_log)} (its log is {where})") from None
    finally:
        builtins.print = print_fn
        task_log.close()
        root.removeFilter(task_log)
        root.setLevel(level)


def _why(err: RuntimeError, failed: list[str], task_log: RunConsole) -> str:
    """`at <step>: <the step's own error line>`, the line a user acts on, last on the terminal;
    kfp.local's own words (which task failed, inside which group) when no step printed one."""
    for task in failed:
        if (line := task_log.error_line(task)) is not None:
            return f"at {task}: {line}"
    return ": " + ANSI.sub("", str(err)).splitlines()[0]


def _finish(cfg: PipelineConfig, work: Path, run_id: str, runner: str, parent: str | None, outputs: dict,
            task_log: RunConsole, seconds: float) -> dict:
    """Copy evaluate's and export's outputs to the config's dirs, write last_run.json, close the
    parent run with the headline metrics, print the summary table."""
    _copy_dir(Path(outputs["evaluation"]), cfg.eval_dir)
    _copy_dir(Path(outputs["exported"]), cfg.export_dir)
    report_path = cfg.eval_dir / "report.json"
    report = json.loads(report_path.read_text())
    cached = sorted(set(task_log.cached))
    executed = sorted(set(task_log.executed) - {FINALIZER, PUBLISH})
    summary = {
        "kfp_run_id": run_id, "parent_run_id": parent, "seconds": round(seconds, 1), "runner": runner,
        "executed": executed, "cached": cached, "report": str(report_path),
        "artifacts": outputs,
        "tracking_uri": tracking.tracking_uri(cfg) if cfg.tracking.enabled else None,
    }
    (work / "last_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    if parent:
        _log_parent(cfg, parent, report, summary)
    print("\n" + summary_table(report))
    print(run_footer(seconds, cached, executed, str(report_path)))
    return summary


def _log_parent(cfg: PipelineConfig, parent: str, report: dict, summary: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    metric = report.get("metric", "accuracy")
    headline = {
        f"teacher.{metric}": (report.get("teacher") or {}).get(metric),
        f"student.{metric}": (report.get("student") or {}).get(metric),
        f"baseline.{metric}": (report.get("baseline") or {}).get(metric),
        f"tfidf.{metric}": (report.get("tfidf") or {}).get(metric),
        "retention": report.get("retention"), "compression": report.get("compression"),
        "speedup": report.get("speedup"), "pipeline_seconds": summary["seconds"],
    }
    for key, value in headline.items():
        if isinstance(value, int | float):
            client.log_metric(parent, key, float(value))
    client.set_tag(parent, "distilflow.cached_steps", ",".join(summary["cached"]) or "none")
    client.log_artifact(parent, summary["report"])
    tracking.end_parent_run(cfg, parent, ok=True)
