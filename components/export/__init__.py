"""export: ONNX (+ int8) with a parity check, an MLflow pyfunc over raw text, the registry gate.

Reads the chosen student (cfg.student_dir(cfg.student.mode)), cfg.eval_dir/report.json (its dev
block decides the gate) and cfg.data_dir/dev.parquet (parity and the int8 keep/drop on the dev
score; test is evaluate's alone). Writes cfg.export_dir atomically: model.onnx, model.int8.onnx
(when kept), pyfunc/ (an MLflow model dir), export_summary.json; only then registers
(lib/publish/registry.py register_export: a rerun finds the version it registered before).

The flow is written once here. What differs by task is hooks.py's ExportHooks, picked by
TASKS[cfg.task]: sequence.py (labels with probabilities, gated on accuracy) and tokens.py (entity
spans, gated on entity F1). ONNX machinery is lib/publish/onnx.py's, the pyfunc bundle and the
champion gate lib/publish/registry.py's.

    python -m components.export --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel

from components.export import sequence, tokens
from components.export.hooks import Dev, ExportHooks
from components.export.sequence import ExportResult
from components.export.tokens import TokenExportResult
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report
from components.lib.publish.onnx import export_onnx, ort_session
from components.lib.publish.registry import (
    build_or_reuse,
    inputs_digest,
    pyfunc_bundle,
    pyfunc_code_paths,
    read_report,
    register_export,
)
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

__all__ = ["run", "main", "TASKS", "ExportResult", "TokenExportResult"]

TASKS: dict[Task, ExportHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}


def build(task: ExportHooks, cfg: PipelineConfig, student, student_dir: Path, dev: Dev, out: Path, scratch: Path) -> dict:
    """The export dir's contents into `out`; int8 kept or dropped on the dev score. -> the summary."""
    import mlflow.pyfunc

    ec = cfg.export
    onnx_path = export_onnx(student, out / "model.onnx", ec.opset)
    worst, score = task.check_onnx(student, ort_session(onnx_path, ec.num_threads), dev, cfg)
    key = f"dev_{task.METRIC}"
    q = {key: None, "kept": False, "reason": "export.quantize is false", "path": None}
    if ec.quantize:
        q = task.quantize(onnx_path, out / "model.int8.onnx", student, dev, score, cfg)
    serve = Path(q["path"]) if (q["kept"] and ec.serve_int8) else onnx_path

    bundle = pyfunc_bundle(student_dir, serve, student, scratch / "student", task.pyfunc_config(cfg))
    code_paths = pyfunc_code_paths(scratch / "code", task.CODE_MODULES)
    mlflow.pyfunc.save_model(str(out / "pyfunc"), **task.pyfunc_kwargs(bundle, code_paths, dev.texts[:2], student.label_names))
    task.check_pyfunc(mlflow.pyfunc.load_model(str(out / "pyfunc")), ort_session(serve), student, dev.texts[:8], cfg)
    # pyfunc.json's keys come last; one that TASK_KEYS holds too keeps its first place
    return {
        **task.TASK_KEYS,
        "onnx": {"path": "model.onnx", "opset": ec.opset, "bytes": onnx_path.stat().st_size,
                 "parity_max_abs_diff": worst, key: score},
        "int8": {k: v for k, v in q.items() if k != "path"} | {"path": q["path"] and Path(q["path"]).name},
        "served": serve.name, "student_dir": str(student_dir), "mode": student.mode, **task.pyfunc_config(cfg),
    }


def log_model(task: ExportHooks, pyfunc_dir: Path, example_texts: list[str], label_names: list[str]):
    """Log the saved pyfunc's own bundle and code (the bytes content_digest covers) to the step's run. -> mlflow's ModelInfo."""
    import mlflow.pyfunc

    from components.lib.publish.pyfunc import BUNDLE

    kwargs = task.pyfunc_kwargs(pyfunc_dir / "artifacts" / BUNDLE, [str(pyfunc_dir / "code" / "components")], example_texts,
                                label_names)
    return mlflow.pyfunc.log_model(name="model", **kwargs)


def register(task: ExportHooks, cfg: PipelineConfig, tracked: bool, summary: dict, rep: dict, student, dev: Dev) -> dict:
    """The complete export dir registered and gated (registry.register_export). -> the final summary."""
    teacher = str(rep.get("teacher", {}).get("model", student.config.get("teacher", {})))
    m = task.METRIC
    tags = {"teacher": teacher, **task.TASK_KEYS, m: repr(summary[m]), "retention": repr(summary["retention"])}
    return register_export(cfg, tracked, summary, tags,
                           lambda: log_model(task, cfg.export_dir / "pyfunc", dev.texts[:2], student.label_names))


def log_to_run(tr, metric: str, summary: dict, decision: dict, export_dir: Path) -> None:
    tr.log_metrics({metric: summary[metric], "retention": summary["retention"], f"dev_{metric}": decision["student"],
                    "dev_retention": decision["retention"], f"onnx_dev_{metric}": summary["onnx"][f"dev_{metric}"],
                    "parity_max_abs_diff": summary["onnx"]["parity_max_abs_diff"], "onnx_bytes": summary["onnx"]["bytes"],
                    **report.flat_metrics({k: v for k, v in summary["int8"].items() if k != "path"}, "int8.")})
    reason = summary["gate_reason"]
    tr.set_tags({"distilflow.champion": summary["champion"], **({"distilflow.gate": reason} if reason else {})})
    tr.log_artifacts(export_dir, "export")


def result(task: ExportHooks, cfg: PipelineConfig, summary: dict) -> BaseModel:
    """The task's RESULT (ExportResult, TokenExportResult) from the final summary."""
    int8 = cfg.export_dir / "model.int8.onnx"
    q, key = summary["int8"], f"dev_{task.METRIC}"
    return task.RESULT(
        onnx_path=str(cfg.export_dir / "model.onnx"), onnx_int8_path=str(int8) if int8.exists() else None,
        parity_max_abs_diff=summary["onnx"]["parity_max_abs_diff"],
        **{f"{key}_fp32": summary["onnx"][key], f"{key}_int8": q.get(key)}, int8_kept=q["kept"], int8_reason=q["reason"],
        pyfunc_dir=str(cfg.export_dir / "pyfunc"), model_uri=summary["model_uri"], registered_model=summary["registered_model"],
        registered_version=summary["registered_version"], champion=summary["champion"], gate_reason=summary["gate_reason"],
    )


def run(cfg: PipelineConfig) -> BaseModel:
    """The step for cfg.task (TASKS): the flow once, the task's hooks inside it. -> its RESULT."""
    import torch

    from components.lib.models.student_io import load_student

    task = TASKS[cfg.task]
    if cfg.export.num_threads:
        torch.set_num_threads(cfg.export.num_threads)
    student_dir = cfg.student_dir(cfg.student.mode)
    student = load_student(student_dir)
    task.check_student(student, student_dir)
    rep = read_report(cfg)
    dev = task.read_dev(cfg, rep)
    if dev.label_names != student.label_names:
        raise UserError(f"{student_dir}/config.json: label_names {student.label_names} differ from the dev split's {dev.label_names}")
    inputs = inputs_digest(cfg, student_dir)

    with tracking.step_run(cfg, "export") as tr, tempfile.TemporaryDirectory() as scratch:
        tr.log_params({"export": cfg.export.model_dump(mode="json"), "student_dir": str(student_dir), "mode": student.mode,
                       **task.pyfunc_config(cfg)})
        summary = build_or_reuse(
            cfg.export_dir, inputs, lambda out: build(task, cfg, student, student_dir, dev, out, Path(scratch)),
            {task.METRIC: float(rep["student"][task.METRIC]), "retention": float(rep["retention"]), "dev": rep["dev"]})
        # The dir is complete: only now anything is registered.
        summary = register(task, cfg, tr.run_id is not None, summary, rep, student, dev)
        log_to_run(tr, task.METRIC, summary, rep["dev"], cfg.export_dir)
    return result(task, cfg, summary)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Export the student: ONNX (+int8), an MLflow pyfunc, registry with a quality gate", argv)
