"""finetune-teacher for sequence classification: fine-tune an encoder classifier on the labeled train split.

Reads <data_dir>/{train,dev}.parquet (never test), trains with the Hugging Face Trainer (so
`torchrun --nproc-per-node N -m components.finetune_teacher` is data parallel with no new code),
evaluates on dev every epoch, stops early and keeps the best dev-accuracy epoch. Writes a
Hugging Face model dir + tokenizer + metrics.json to cfg.teacher_dir, and logs the run and the
model (an MLflow `transformers` model under `teacher`, so `runs:/<id>/teacher` is a model ref).
With teacher.finetune=false the model is taken as already fine-tuned: its labels are checked
against the data's, dev is scored, and it is saved as the output. The Trainer checkpoints every
epoch beside the output (lib/finetune.checkpoint_dir); a killed run resumes from the last one when
the settings, data and starting weights are the same, and the checkpoints go once the output is written.
The Trainer set-up (fit), the finetune=false check, the output dir and the MLflow model logging
are lib/training/finetune.py's, shared with token classification (finetune_teacher/tokens.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from transformers import set_seed

from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.core.torch_utils import count_parameters
from components.lib.core.truncation import tokenize_truncated
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from components.lib.training.finetune import (
    STEP,
    best_epoch,
    checkpoint_dir,
    fit,
    load_finetuned,
    log_model,
    run_fingerprint,
    save_teacher,
    set_threads,
)

log = logging.getLogger("distilflow.finetune_teacher")


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


def _dev_accuracy(model, tokenizer, dev: data.Labeled, cfg: PipelineConfig) -> float:
    logits, _ = T.score(model, tokenizer, dev.table.column("text").to_pylist(), cfg.teacher.max_length, cfg.transfer.batch_size)
    labels = np.asarray(dev.table.column("label").to_numpy())
    return float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0


def _train(cfg: PipelineConfig, model, tokenizer, train: data.Labeled, dev: data.Labeled, ckpt_dir: Path, fingerprint: str):
    """Sequence classification: (trainer, per-epoch history, train examples/s, epochs resumed)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    def encode(split: data.Labeled) -> Dataset:
        enc = tokenize_truncated(tokenizer, split.table.column("text").to_pylist(), cfg.teacher.max_length)
        return Dataset.from_dict({**enc, "labels": split.table.column("label").to_pylist()})

    def accuracy(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == pred.label_ids).mean())}

    return fit(cfg, model, tokenizer, encode(train), encode(dev), DataCollatorWithPadding(tokenizer), accuracy,
               ("accuracy",), ckpt_dir, fingerprint)


def run(cfg: PipelineConfig) -> FinetuneResult:
    tc = cfg.teacher
    t0 = time.perf_counter()
    set_threads(tc.num_threads)
    train = data.read_labeled(cfg.data_dir / "train.parquet")
    dev = data.read_labeled(cfg.data_dir / "dev.parquet")
    if train.label_names != dev.label_names:
        raise UserError(f"{cfg.data_dir / 'dev.parquet'}: label names {dev.label_names} differ from train's {train.label_names}")
    names = train.label_names
    src = tracking.resolve_model_ref(tc.model, cfg)

    with tracking.step_run(cfg, STEP) as tr:
        tr.log_params({"teacher": tc.model_dump(mode="json"), "train_rows": len(train.table), "dev_rows": len(dev.table),
                       "label_names": names})
        history: dict[int, dict[str, float]] = {}
        ex_per_s: float | None = None
        resumed = 0
        is_main = True
        ckpt = checkpoint_dir(cfg.teacher_dir)
        if tc.finetune:
            # Seed before the fresh classifier head is initialised: Trainer seeds only later,
            # so without this two runs with the same seed start from different heads.
            set_seed(tc.seed)
            model, tokenizer = T.load_teacher(src, label_names=names)
            log.info("fine-tuning %s (%.1fM params) on %d examples, dev %d", tc.model,
                     count_parameters(model) / 1e6, len(train.table), len(dev.table))
            fingerprint = run_fingerprint(cfg, [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"], src, model)
            trainer, history, ex_per_s, resumed = _train(cfg, model, tokenizer, train, dev, ckpt, fingerprint)
            model = trainer.model
            is_main = trainer.is_world_process_zero()
        else:
            model, tokenizer = load_finetuned(src, tc.model, names)
        if not is_main:  # other torchrun ranks: rank 0 writes the output and logs
            return FinetuneResult(teacher_dir=str(cfg.teacher_dir), label_names=names, dev_accuracy=float("nan"),
                                  best_epoch=None, epochs_run=len(history), epochs_resumed=resumed, train_examples_per_s=ex_per_s,
                                  params=count_parameters(model), seconds=time.perf_counter() - t0,
                                  mlflow_run_id=None, model_uri=None)
        model.eval()
        dev_acc = _dev_accuracy(model, tokenizer, dev, cfg)
        best = best_epoch(history)
        seconds = time.perf_counter() - t0
        params = count_parameters(model)
        metrics = {
            "dev_accuracy": dev_acc,
            "best_epoch": best,
            "epochs_run": len(history),
            "history": [{"epoch": ep, **h} for ep, h in sorted(history.items())],
            "train_examples_per_s": ex_per_s,
            "params": params,
            "seconds": seconds,
            "finetuned": tc.finetune,
            "label_names": names,
            "source": tc.model,
        }
        save_teacher(cfg.teacher_dir, model, tokenizer, metrics)
        log.info("teacher: dev accuracy %.4f (best epoch %s of %d), %.1f train examples/s, %.0f s -> %s",
                 dev_acc, best, len(history), ex_per_s or 0.0, seconds, cfg.teacher_dir)

        for ep, h in sorted(history.items()):
            tr.log_metrics(h, step=ep)
        tr.log_metrics({"dev_accuracy": dev_acc, "best_epoch": best or 0, "params": params, "seconds": seconds,
                        **({"train_examples_per_s": ex_per_s} if ex_per_s else {})})
        model_uri = None
        if tr.run_id is not None:
            tr.log_artifacts(cfg.teacher_dir, "teacher_dir")
            model_uri = log_model(tr, model, tokenizer, "text-classification", dev.table.column("text").to_pylist()[:2])
        return FinetuneResult(teacher_dir=str(cfg.teacher_dir), label_names=names, dev_accuracy=dev_acc, best_epoch=best,
                              epochs_run=len(history), epochs_resumed=resumed, train_examples_per_s=ex_per_s, params=params, seconds=seconds,
                              mlflow_run_id=tr.run_id, model_uri=model_uri)

