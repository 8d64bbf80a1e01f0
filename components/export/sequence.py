"""export for sequence classification: ONNX (+ int8) with a parity check, an MLflow pyfunc over raw
text returning labels with probabilities, the registry gate.

Reads the chosen student (cfg.student_dir(cfg.student.mode)), cfg.eval_dir/report.json (its dev
block decides the gate) and cfg.data_dir/dev.parquet (parity and the int8 keep/drop; test is
evaluate's alone). Writes cfg.export_dir atomically: model.onnx, model.int8.onnx (when kept),
pyfunc/ (an MLflow model dir), export_summary.json; only then registers (lib/registry.publish:
a rerun finds the version it registered before). ONNX export, parity and int8 are lib/publish/onnx.py's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.evaluation import report
from components.lib.publish.onnx import (
    ParityError,
    check_parity,
    export_onnx,
    onnx_predict_logits,
    ort_session,
    try_int8,
)
from components.lib.publish.registry import (
    build_or_reuse,
    inputs_digest,
    pip_requirements,
    pyfunc_bundle,
    pyfunc_code_paths,
    read_report,
    register_export,
)
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger(__name__)


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    onnx_path: str
    onnx_int8_path: str | None
    parity_max_abs_diff: float
    dev_accuracy_fp32: float  # the fp32 ONNX student's accuracy on the dev split
    dev_accuracy_int8: float | None  # the int8 graph's, which decided its keep/drop
    int8_kept: bool
    int8_reason: str
    pyfunc_dir: str
    model_uri: str | None
    registered_model: str | None
    registered_version: str | None
    champion: bool
    gate_reason: str | None


# ---------------------------------------------------------------- pyfunc

def pyfunc_kwargs(bundle: Path, code_paths: list[str], example_texts: list[str], label_names: list[str]) -> dict:
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.lib.publish.pyfunc import BUNDLE, StudentTextClassifier

    outputs = [ColSpec("string", "label"), ColSpec("double", "score")]
    outputs += [ColSpec("double", f"prob_{n}") for n in label_names]
    return {
        "python_model": StudentTextClassifier(),
        "artifacts": {BUNDLE: str(bundle)},
        "code_paths": code_paths,
        # One unnamed string column: MLflow then accepts a list of strings as well as a DataFrame
        # whose single column is `text` (a named column would reject plain lists).
        "signature": ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(outputs)),
        "input_example": pd.DataFrame({"text": example_texts}),
        "pip_requirements": pip_requirements(),
    }


# ---------------------------------------------------------------- the step

def build(cfg: PipelineConfig, student, student_dir: Path, texts: list[str], labels: np.ndarray, out: Path,
          scratch: Path) -> dict:
    """The export dir's contents into `out`; int8 kept or dropped on the dev texts. -> the summary."""
    import mlflow.pyfunc
    import pandas as pd

    ec = cfg.export
    onnx_path = export_onnx(student, out / "model.onnx", ec.opset)
    session = ort_session(onnx_path, ec.num_threads)
    worst = check_parity(student, session, texts)
    acc_fp32 = float((onnx_predict_logits(session, student, texts).argmax(1) == labels).mean())
    log.info("ONNX parity on %d dev texts: max |Δlogit| %.2e; dev accuracy %.4f", len(texts), worst, acc_fp32)
    q = {"dev_accuracy": None, "kept": False, "reason": "export.quantize is false", "path": None}
    if ec.quantize:
        q = _try_int8(onnx_path, out / "model.int8.onnx", student, texts, labels, acc_fp32, cfg)
    serve = Path(q["path"]) if (q["kept"] and ec.serve_int8) else onnx_path

    bundle = pyfunc_bundle(student_dir, serve, student, scratch / "student")
    mlflow.pyfunc.save_model(str(out / "pyfunc"), **pyfunc_kwargs(bundle, pyfunc_code_paths(scratch / "code"), texts[:2],
                                                                   student.label_names))
    check = mlflow.pyfunc.load_model(str(out / "pyfunc")).predict(pd.DataFrame({"text": texts[:8]}))
    want = [student.label_names[i] for i in onnx_predict_logits(ort_session(serve), student, texts[:8]).argmax(1)]
    if check["label"].tolist() != want:
        raise ParityError(f"pyfunc predictions {check['label'].tolist()} differ from ONNX {want}")
    return {
        "onnx": {"path": "model.onnx", "opset": ec.opset, "bytes": onnx_path.stat().st_size,
                 "parity_max_abs_diff": worst, "dev_accuracy": acc_fp32},
        "int8": {k: v for k, v in q.items() if k != "path"} | {"path": q["path"] and Path(q["path"]).name},
        "served": serve.name, "student_dir": str(student_dir), "mode": student.mode,
    }


def run(cfg: PipelineConfig) -> ExportResult:
    import torch

    from components.lib.models.student_io import load_student

    if cfg.export.num_threads:
        torch.set_num_threads(cfg.export.num_threads)
    student_dir = cfg.student_dir(cfg.student.mode)
    student = load_student(student_dir)
    rep = read_report(cfg)
    dev = data.read_labeled(cfg.data_dir / "dev.parquet")
    texts, labels = dev.table.column("text").to_pylist(), np.asarray(dev.table.column("label").to_pylist())
    if dev.label_names != student.label_names:
        raise UserError(f"{student_dir}/config.json: label_names {student.label_names} differ from the dev split's {dev.label_names}")
    decision = rep["dev"]
    ec = cfg.export
    inputs = inputs_digest(cfg, student_dir)

    with tracking.step_run(cfg, "export") as tr, tempfile.TemporaryDirectory() as scratch:
        tr.log_params({"export": ec.model_dump(mode="json"), "student_dir": str(student_dir), "mode": student.mode})
        summary = build_or_reuse(
            cfg.export_dir, inputs, lambda out: build(cfg, student, student_dir, texts, labels, out, Path(scratch)),
            {"accuracy": float(rep["student"]["accuracy"]), "retention": float(rep["retention"]), "dev": decision})
        # The dir is complete: only now anything is registered.
        teacher = str(rep.get("teacher", {}).get("model", student.config.get("teacher", {})))
        summary = register_export(
            cfg, tr.run_id is not None, summary,
            {"teacher": teacher, "accuracy": repr(summary["accuracy"]), "retention": repr(summary["retention"])},
            lambda: _log_model(cfg.export_dir / "pyfunc", texts[:2], student.label_names))
        champion, reason = summary["champion"], summary["gate_reason"]

        tr.log_metrics({"accuracy": summary["accuracy"], "retention": summary["retention"],
                        "dev_accuracy": decision["student"], "dev_retention": decision["retention"],
                        "onnx_dev_accuracy": summary["onnx"]["dev_accuracy"],
                        "parity_max_abs_diff": summary["onnx"]["parity_max_abs_diff"], "onnx_bytes": summary["onnx"]["bytes"],
                        **report.flat_metrics({k: v for k, v in summary["int8"].items() if k != "path"}, "int8.")})
        tr.set_tags({"distilflow.champion": champion, **({"distilflow.gate": reason} if reason else {})})
        tr.log_artifacts(cfg.export_dir, "export")

    int8 = cfg.export_dir / "model.int8.onnx"
    q = summary["int8"]
    return ExportResult(
        onnx_path=str(cfg.export_dir / "model.onnx"), onnx_int8_path=str(int8) if int8.exists() else None,
        parity_max_abs_diff=summary["onnx"]["parity_max_abs_diff"], dev_accuracy_fp32=summary["onnx"]["dev_accuracy"],
        dev_accuracy_int8=q.get("dev_accuracy"), int8_kept=q["kept"], int8_reason=q["reason"],
        pyfunc_dir=str(cfg.export_dir / "pyfunc"), model_uri=summary["model_uri"], registered_model=summary["registered_model"],
        registered_version=summary["registered_version"], champion=champion, gate_reason=reason,
    )


def _log_model(pyfunc_dir: Path, example_texts: list[str], label_names: list[str]):
    """Log the saved pyfunc's own bundle and code (the bytes content_digest covers) to the step's run. -> mlflow's ModelInfo."""
    import mlflow.pyfunc

    from components.lib.publish.pyfunc import BUNDLE

    kwargs = pyfunc_kwargs(pyfunc_dir / "artifacts" / BUNDLE, [str(pyfunc_dir / "code" / "components")], example_texts,
                           label_names)
    return mlflow.pyfunc.log_model(name="model", **kwargs)


def _try_int8(fp32: Path, out: Path, student, texts, labels, acc_fp32: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="dev_accuracy", label="dev accuracy", base=acc_fp32, items=texts, unit="examples",
        measure=lambda sess: float((onnx_predict_logits(sess, student, texts).argmax(1) == labels).mean()),
        predict=lambda sess, b: onnx_predict_logits(sess, student, b, bs),
    )

