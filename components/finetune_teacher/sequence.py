"""finetune-teacher: fine-tune an encoder classifier on the labeled train split.

Reads <data_dir>/{train,dev}.parquet (never test), trains with the Hugging Face Trainer (so
`torchrun --nproc-per-node N -m components.finetune_teacher` is data parallel with no new code),
evaluates on dev every epoch, stops early and keeps the best dev-accuracy epoch. Writes a
Hugging Face model dir + tokenizer + metrics.json to cfg.teacher_dir, and logs the run and the
model (an MLflow `transformers` model under `teacher`, so `runs:/<id>/teacher` is a model ref).
With teacher.finetune=false the model is taken as already fine-tuned: its labels are checked
against the data's, dev is scored, and it is saved as the output.
task: token-classification is components/teacher_tokens.py, which reuses the Trainer setup (fit),
the finetune=false check, the output dir and the MLflow model logging defined here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from transformers import set_seed

from components.lib import data, tracking
from components.lib import teacher as T
from components.lib.cli import step_main
from components.lib.config import PipelineConfig
from components.lib.errors import UserError
from components.lib.truncation import tokenize_truncated

log = logging.getLogger("distilflow.finetune_teacher")
STEP = "finetune-teacher"


class FinetuneResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    teacher_dir: str
    label_names: list[str]
    dev_accuracy: float
    best_epoch: int | None
    epochs_run: int
    train_examples_per_s: float | None
    params: int
    seconds: float
    mlflow_run_id: str | None
    model_uri: str | None


def _dev_accuracy(model, tokenizer, dev: data.Labeled, cfg: PipelineConfig) -> float:
    logits, _ = T.score(model, tokenizer, dev.table.column("text").to_pylist(), cfg.teacher.max_length, cfg.transfer.batch_size)
    labels = np.asarray(dev.table.column("label").to_numpy())
    return float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0


def set_threads(threads: int | None) -> None:
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)


def fit(cfg: PipelineConfig, model, tokenizer, train_ds, dev_ds, collator, compute_metrics, metrics: Sequence[str],
        ckpt_dir: Path, preprocess_logits=None):
    """Trainer fine-tuning shared by both tasks: dev evaluation every epoch, early stopping on
    metrics[0] (greater is better) with the best checkpoint restored. Returns (trainer, per-epoch
    history {epoch: {dev_<metric>, dev_loss, train_loss}}, train examples/s)."""
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    tc = cfg.teacher
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        learning_rate=tc.lr,
        num_train_epochs=tc.epochs,
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=max(tc.batch_size, 32),
        gradient_accumulation_steps=tc.grad_accum,
        warmup_steps=tc.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=tc.weight_decay,
        seed=tc.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_only_model=True,  # no optimizer state: checkpoints only serve best-model selection
        save_total_limit=tc.patience + 1,
        load_best_model_at_end=True,
        metric_for_best_model=metrics[0],
        greater_is_better=True,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=tc.patience)],
    )
    out = trainer.train()
    history: dict[int, dict[str, float]] = {}
    for rec in trainer.state.log_history:
        if "epoch" not in rec:
            continue
        ep = int(round(rec["epoch"]))
        if f"eval_{metrics[0]}" in rec:
            for m in metrics:
                history.setdefault(ep, {})[f"dev_{m}"] = float(rec[f"eval_{m}"])
            history[ep]["dev_loss"] = float(rec.get("eval_loss", float("nan")))
        elif "loss" in rec:
            history.setdefault(ep, {})["train_loss"] = float(rec["loss"])
    return trainer, history, float(out.metrics.get("train_samples_per_second", 0.0))


def _train(cfg: PipelineConfig, model, tokenizer, train: data.Labeled, dev: data.Labeled, ckpt_dir: Path):
    """Sequence classification: (trainer, per-epoch history, train examples/s)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    def encode(split: data.Labeled) -> Dataset:
        enc = tokenize_truncated(tokenizer, split.table.column("text").to_pylist(), cfg.teacher.max_length)
        return Dataset.from_dict({**enc, "labels": split.table.column("label").to_pylist()})

    def accuracy(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == pred.label_ids).mean())}

    return fit(cfg, model, tokenizer, encode(train), encode(dev), DataCollatorWithPadding(tokenizer), accuracy,
               ("accuracy",), ckpt_dir)


def best_epoch(history: dict[int, dict[str, float]], key: str = "dev_accuracy") -> int | None:
    # The Trainer keeps the first epoch reaching the maximum (strictly greater replaces).
    scored = [(ep, h[key]) for ep, h in sorted(history.items()) if key in h]
    if not scored:
        return None
    best = max(acc for _, acc in scored)
    return next(ep for ep, acc in scored if acc == best)


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "accelerate"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return reqs


def load_finetuned(src, ref: str, names: list[str], task: str = "sequence-classification"):
    """teacher.finetune=false: `src` must already be a classifier of the task over exactly `names`."""
    what, head = (("token classifier", "*ForTokenClassification") if task == "token-classification"
                  else ("classifier", "*ForSequenceClassification"))
    if not T.head_is_trained(src, task=task):
        raise UserError(f"teacher.model {ref}: not a fine-tuned {what} (no {head} head); set teacher.finetune=true")
    model, tokenizer = T.load_teacher(src, task=task)
    if T.label_names_of(model) != names:
        raise UserError(f"teacher.model {ref}: labels {T.label_names_of(model)} do not match the data's {names}")
    return model, tokenizer


def save_teacher(out_dir: Path, model, tokenizer, metrics: dict) -> None:
    """The step's output, atomically: the Hugging Face dir (safetensors + tokenizer) + metrics.json."""
    with data.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        data.write_json(tmp / "metrics.json", metrics)


def log_model(tr: tracking.StepTracker, model, tokenizer, task: str, input_example: list[str]) -> str | None:
    """Log the model as an MLflow transformers model under `teacher`; its `runs:/<id>/teacher` URI."""
    if tr.run_id is None:
        return None
    import mlflow

    mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="teacher",
        task=task,
        input_example=input_example,
        # explicit: mlflow's default list pins torchvision, which this image lacks
        pip_requirements=pip_requirements(),
    )
    model_uri = f"runs:/{tr.run_id}/teacher"
    tr.set_tags({"distilflow.teacher_uri": model_uri})
    return model_uri


def run(cfg: PipelineConfig) -> FinetuneResult:
    if cfg.is_token_task:
        from components import teacher_tokens

        return teacher_tokens.run(cfg)
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
        is_main = True
        with tempfile.TemporaryDirectory(prefix="distilflow-teacher-ckpt-") as ckpt:
            if tc.finetune:
                # Seed before the fresh classifier head is initialised: Trainer seeds only later,
                # so without this two runs with the same seed start from different heads.
                set_seed(tc.seed)
                model, tokenizer = T.load_teacher(src, label_names=names)
                log.info("fine-tuning %s (%.1fM params) on %d examples, dev %d", tc.model,
                         T.count_parameters(model) / 1e6, len(train.table), len(dev.table))
                trainer, history, ex_per_s = _train(cfg, model, tokenizer, train, dev, Path(ckpt))
                model = trainer.model
                is_main = trainer.is_world_process_zero()
            else:
                model, tokenizer = load_finetuned(src, tc.model, names)
        if not is_main:  # other torchrun ranks: rank 0 writes the output and logs
            return FinetuneResult(teacher_dir=str(cfg.teacher_dir), label_names=names, dev_accuracy=float("nan"),
                                  best_epoch=None, epochs_run=len(history), train_examples_per_s=ex_per_s,
                                  params=T.count_parameters(model), seconds=time.perf_counter() - t0,
                                  mlflow_run_id=None, model_uri=None)
        model.eval()
        dev_acc = _dev_accuracy(model, tokenizer, dev, cfg)
        best = best_epoch(history)
        seconds = time.perf_counter() - t0
        params = T.count_parameters(model)
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
                              epochs_run=len(history), train_examples_per_s=ex_per_s, params=params, seconds=seconds,
                              mlflow_run_id=tr.run_id, model_uri=model_uri)


def main(argv=None):
    return step_main(run, "Fine-tune the teacher classifier on the labeled train split (dev for early stopping).", argv)


if __name__ == "__main__":
    raise SystemExit(main())
