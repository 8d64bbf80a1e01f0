"""export's hooks for sequence classification (components/export/hooks.py ExportHooks): per-text
ONNX parity, dev accuracy for the int8 keep/drop, and the pyfunc over raw text that returns a
label with its probabilities. The flow around them is components/export/__init__.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.export.hooks import Dev
from components.lib.contracts import data
from components.lib.publish.onnx import ParityError, check_parity, onnx_predict_logits, try_int8
from components.lib.publish.registry import CLASSIFIER_MODULES, pip_requirements
from components.lib.settings.config import PipelineConfig

log = logging.getLogger(__name__)

METRIC = "accuracy"
TASK_KEYS: dict[str, str] = {}  # a classifier's summary and tags name no task: it is the default
CODE_MODULES = CLASSIFIER_MODULES


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


RESULT = ExportResult


def check_student(student, student_dir: Path) -> None:
    """Nothing to check: the classifier's export has always taken the student as it is."""


def read_dev(cfg: PipelineConfig, rep: dict) -> Dev:
    """The dev texts and their class ids (`rep` needs no check here: read_report checked the keys read)."""
    dev = data.read_labeled(cfg.data_dir / "dev.parquet")
    texts = dev.table.column("text").to_pylist()
    return Dev(dev.label_names, texts, np.asarray(dev.table.column("label").to_pylist()), texts)


# ---------------------------------------------------------------- ONNX

def dev_accuracy(session, student, dev: Dev) -> float:
    return float((onnx_predict_logits(session, student, dev.items).argmax(1) == dev.gold).mean())


def check_onnx(student, session, dev: Dev, cfg: PipelineConfig) -> tuple[float, float]:
    worst = check_parity(student, session, dev.items)
    acc = dev_accuracy(session, student, dev)
    log.info("ONNX parity on %d dev texts: max |Δlogit| %.2e; dev accuracy %.4f", len(dev.items), worst, acc)
    return worst, acc


def quantize(fp32: Path, out: Path, student, dev: Dev, base: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="dev_accuracy", label="dev accuracy", base=base, items=dev.items, unit="examples",
        measure=lambda sess: dev_accuracy(sess, student, dev),
        predict=lambda sess, b: onnx_predict_logits(sess, student, b, bs),
    )


# ---------------------------------------------------------------- pyfunc

def pyfunc_config(cfg: PipelineConfig) -> dict:
    return {}  # the student's label names, max_length and mode are all the classifier reads


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


def check_pyfunc(model, session, student, texts: list[str], cfg: PipelineConfig) -> None:
    import pandas as pd

    check = model.predict(pd.DataFrame({"text": texts}))
    want = [student.label_names[i] for i in onnx_predict_logits(session, student, texts).argmax(1)]
    if check["label"].tolist() != want:
        raise ParityError(f"pyfunc predictions {check['label'].tolist()} differ from ONNX {want}")
