"""export for sequence classification: ONNX (+ int8) with a parity check, an MLflow pyfunc over raw
text returning labels with probabilities, the registry gate on accuracy.

Reads the chosen student (cfg.student_dir(cfg.student.mode)), cfg.eval_dir/report.json (its
accuracy and retention decide the gate) and cfg.data_dir/test.parquet (parity and the int8
accuracy only; evaluation already happened). Writes cfg.export_dir atomically:
model.onnx, model.int8.onnx (when kept), pyfunc/ (an MLflow model dir), export_summary.json.
ONNX export, parity and int8 are lib/onnx.py's; the bundle and the registry lib/registry.py's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib import data, report, tracking
from components.lib.config import PipelineConfig
from components.lib.errors import UserError
from components.lib.onnx import (
    ParityError,
    check_parity,
    export_onnx,
    onnx_predict_logits,
    ort_session,
    try_int8,
)
from components.lib.registry import pip_requirements, pyfunc_bundle, pyfunc_code_paths, read_report, register

log = logging.getLogger(__name__)


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    onnx_path: str
    onnx_int8_path: str | None
    parity_max_abs_diff: float
    accuracy_fp32: float
    accuracy_int8: float | None
    int8_kept: bool
    int8_reason: str
    pyfunc_dir: str
    model_uri: str | None
    registered_model: str | None
    registered_version: str | None
    champion: bool
    gate_reason: str | None


# ---------------------------------------------------------------- pyfunc

def pyfunc_kwargs(bundle: Path, code_dir: Path, example_texts: list[str], label_names: list[str]) -> dict:
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.lib.pyfunc import BUNDLE, StudentTextClassifier

    outputs = [ColSpec("string", "label"), ColSpec("double", "score")]
    outputs += [ColSpec("double", f"prob_{n}") for n in label_names]
    return {
        "python_model": StudentTextClassifier(),
        "artifacts": {BUNDLE: str(bundle)},
        "code_paths": pyfunc_code_paths(code_dir),
        # One unnamed string column: MLflow then accepts a list of strings as well as a DataFrame
        # whose single column is `text` (a named column would reject plain lists).
        "signature": ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(outputs)),
        "input_example": pd.DataFrame({"text": example_texts}),
        "pip_requirements": pip_requirements(),
    }


# ---------------------------------------------------------------- the step

def run(cfg: PipelineConfig) -> ExportResult:
    import torch

    from components.lib.student_io import load_student

    if cfg.export.num_threads:
        torch.set_num_threads(cfg.export.num_threads)
    student_dir = cfg.student_dir(cfg.student.mode)
    student = load_student(student_dir)
    rep = read_report(cfg)
    test = data.read_labeled(cfg.data_dir / "test.parquet")
    texts, labels = test.table.column("text").to_pylist(), np.asarray(test.table.column("label").to_pylist())
    if test.label_names != student.label_names:
        raise UserError(f"{student_dir}/config.json: label_names {student.label_names} differ from the test split's {test.label_names}")
    accuracy, retention = float(rep["student"]["accuracy"]), float(rep["retention"])
    card = cfg.data_dir / "data_card.json"
    ec = cfg.export

    with tracking.step_run(cfg, "export") as tr, tempfile.TemporaryDirectory() as scratch:
        tr.log_params({"export": ec.model_dump(mode="json"), "student_dir": str(student_dir), "mode": student.mode})
        with data.atomic_dir(cfg.export_dir) as out:
            onnx_path = export_onnx(student, out / "model.onnx", ec.opset)
            session = ort_session(onnx_path, cfg.export.num_threads)
            worst = check_parity(student, session, texts)
            acc_fp32 = float((onnx_predict_logits(session, student, texts).argmax(1) == labels).mean())
            log.info("ONNX parity on %d test texts: max |Δlogit| %.2e; accuracy %.4f", len(texts), worst, acc_fp32)

            q = {"accuracy": None, "kept": False, "reason": "export.quantize is false", "path": None}
            if ec.quantize:
                q = _try_int8(onnx_path, out / "model.int8.onnx", student, texts, labels, acc_fp32, cfg)
            serve = Path(q["path"]) if (q["kept"] and ec.serve_int8) else onnx_path

            import mlflow.pyfunc
            import pandas as pd

            bundle = pyfunc_bundle(student_dir, serve, student, Path(scratch) / "student")
            kwargs = pyfunc_kwargs(bundle, Path(scratch) / "code", texts[:2], student.label_names)
            mlflow.pyfunc.save_model(str(out / "pyfunc"), **kwargs)
            check = mlflow.pyfunc.load_model(str(out / "pyfunc")).predict(pd.DataFrame({"text": texts[:8]}))
            want = [student.label_names[i] for i in onnx_predict_logits(ort_session(serve), student, texts[:8]).argmax(1)]
            if check["label"].tolist() != want:
                raise ParityError(f"pyfunc predictions {check['label'].tolist()} differ from ONNX {want}")

            summary = {
                "onnx": {"path": "model.onnx", "opset": ec.opset, "bytes": onnx_path.stat().st_size,
                         "parity_max_abs_diff": worst, "accuracy": acc_fp32},
                "int8": {k: v for k, v in q.items() if k != "path"} | {"path": q["path"] and Path(q["path"]).name},
                "served": serve.name, "student_dir": str(student_dir), "mode": student.mode,
                "accuracy": accuracy, "retention": retention, "model_uri": None, "registered_model": None,
                "registered_version": None, "champion": False, "gate_reason": None,
            }
            model_uri = version = reason = None
            champion = False
            if tr.run_id is not None:
                info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(bundle, Path(scratch) / "code2", texts[:2], student.label_names))
                model_uri = info.model_uri
                if ec.register_model:
                    tags = {
                        "teacher": str(rep.get("teacher", {}).get("model", student.config.get("teacher", {}))),
                        "data_card_sha256": data.sha256_file(card) if card.exists() else "",
                        "mode": student.mode, "accuracy": repr(accuracy), "retention": repr(retention),
                        "onnx": serve.name,
                    }
                    if cfg.tracking.kfp_run_id:
                        tags["kfp_run_id"] = cfg.tracking.kfp_run_id
                    version, champion, reason = register(cfg, model_uri, tags, accuracy, retention)
                else:
                    reason = "export.register_model is false"
            else:
                reason = "tracking disabled: nothing registered"
            summary.update(model_uri=model_uri, registered_model=ec.model_name if version else None,
                           registered_version=version, champion=champion, gate_reason=reason)
            data.write_json(out / "export_summary.json", summary)

        tr.log_metrics({"accuracy": accuracy, "retention": retention, "onnx_accuracy": acc_fp32,
                        "parity_max_abs_diff": worst, "onnx_bytes": summary["onnx"]["bytes"],
                        **report.flat_metrics({k: v for k, v in q.items() if k != "path"}, "int8.")})
        tr.set_tags({"distilflow.champion": champion, **({"distilflow.gate": reason} if reason else {})})
        tr.log_artifacts(cfg.export_dir, "export")

    int8 = cfg.export_dir / "model.int8.onnx"
    return ExportResult(
        onnx_path=str(cfg.export_dir / "model.onnx"), onnx_int8_path=str(int8) if int8.exists() else None,
        parity_max_abs_diff=worst, accuracy_fp32=acc_fp32, accuracy_int8=q["accuracy"], int8_kept=q["kept"],
        int8_reason=q["reason"], pyfunc_dir=str(cfg.export_dir / "pyfunc"), model_uri=model_uri,
        registered_model=summary["registered_model"], registered_version=version, champion=champion, gate_reason=reason,
    )


def _try_int8(fp32: Path, out: Path, student, texts, labels, acc_fp32: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="accuracy", label="accuracy", base=acc_fp32, items=texts, unit="examples",
        measure=lambda sess: float((onnx_predict_logits(sess, student, texts).argmax(1) == labels).mean()),
        predict=lambda sess, b: onnx_predict_logits(sess, student, b, bs),
    )

