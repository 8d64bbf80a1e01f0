"""finetune-teacher hooks for sequence classification (an AutoModelForSequenceClassification):
each text is truncated to teacher.max_length and padded per batch; dev is scored as accuracy and
the best-accuracy epoch is kept. The model is logged as an MLflow `text-classification` pipeline.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data
from components.lib.core.task import Task
from components.lib.core.truncation import tokenize_truncated
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from components.lib.training import finetune as F

TASK = Task.sequence_classification
DEV_METRICS = ("accuracy",)
SCORES = ("dev_accuracy",)
FIT_LOG = "fine-tuning %s (%.1fM params) on %d examples, dev %d"
DONE_LOG = "teacher: dev accuracy %.4f (best epoch %s of %d), %.1f train examples/s, %.0f s -> %s"
read = data.read_labeled


class FinetuneResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    teacher_dir: str
    label_names: list[str]
    dev_accuracy: float
    best_epoch: int | None
    epochs_run: int
    train_examples_per_s: float | None
    epochs_resumed: int = 0  # epochs a killed run had finished, restored from its checkpoint
    params: int
    seconds: float
    mlflow_run_id: str | None
    model_uri: str | None


Result = FinetuneResult


def _texts(split: data.Labeled) -> list[str]:
    return split.table.column("text").to_pylist()


def params(train: data.Labeled, dev: data.Labeled) -> dict:
    return {"train_rows": len(train.table), "dev_rows": len(dev.table)}


def fit_inputs(cfg: PipelineConfig, tokenizer, train: data.Labeled, dev: data.Labeled):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    def encode(split: data.Labeled) -> Dataset:
        enc = tokenize_truncated(tokenizer, _texts(split), cfg.teacher.max_length, cfg.teacher.keep_tail)
        return Dataset.from_dict({**enc, "labels": split.table.column("label").to_pylist()})

    def accuracy(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == pred.label_ids).mean())}

    return encode(train), encode(dev), DataCollatorWithPadding(tokenizer), accuracy


def report(model, tokenizer, train: data.Labeled, dev: data.Labeled, cfg: PipelineConfig) -> dict:
    logits, _ = T.score(model, tokenizer, _texts(dev), cfg.teacher.max_length, cfg.transfer.batch_size, keep_tail=cfg.teacher.keep_tail)
    labels = np.asarray(dev.table.column("label").to_numpy())
    return {"dev_accuracy": float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0}


def run_metrics(report: dict) -> dict:
    return {"dev_accuracy": report["dev_accuracy"]}


def log_model(tr: tracking.StepTracker, model, tokenizer, dev: data.Labeled) -> str | None:
    return F.log_model(tr, model, tokenizer, "text-classification", _texts(dev)[:2])
