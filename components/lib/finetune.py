"""Teacher fine-tuning machinery both tasks share: the Hugging Face Trainer set-up with dev
evaluation every epoch and early stopping, the finetune=false check, the output dir and the
MLflow model logging. The task modules (components/finetune_teacher/) bring the encoding,
the collator and the dev metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from components.lib import data, tracking
from components.lib import teacher as T
from components.lib.config import PipelineConfig
from components.lib.errors import UserError
from components.lib.task import Task

STEP = "finetune-teacher"
# What an MLflow transformers model of the teacher needs (explicit: mlflow's default list pins
# torchvision, which the image lacks).
TEACHER_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate")


def set_threads(threads: int | None) -> None:
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)


def optimizer(model: torch.nn.Module, tc) -> torch.optim.AdamW:
    """AdamW over the encoder at teacher.lr and the classifier head (every module outside the base
    model) at teacher.head_lr; no weight decay on biases and LayerNorm weights, as the Trainer's
    default; the word embeddings left out (and frozen) with teacher.freeze_embeddings. The Trainer
    adds its linear warm-up/decay schedule over these groups."""
    if tc.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    prefix = model.base_model_prefix + "."
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = not name.startswith(prefix)
        decay = not (name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name)
        groups.setdefault((head, decay), []).append(param)
    return torch.optim.AdamW([
        {"params": params, "lr": (tc.head_lr or tc.lr) if head else tc.lr, "weight_decay": tc.weight_decay if decay else 0.0}
        for (head, decay), params in sorted(groups.items())
    ], lr=tc.lr)


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
        # Trainer's own AdamW unless the head gets its own lr or the embeddings stay fixed
        optimizers=(optimizer(model, tc), None) if tc.head_lr is not None or tc.freeze_embeddings else (None, None),
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


def best_epoch(history: dict[int, dict[str, float]], key: str = "dev_accuracy") -> int | None:
    # The Trainer keeps the first epoch reaching the maximum (strictly greater replaces).
    scored = [(ep, h[key]) for ep, h in sorted(history.items()) if key in h]
    if not scored:
        return None
    best = max(acc for _, acc in scored)
    return next(ep for ep, acc in scored if acc == best)


def load_finetuned(src, ref: str, names: list[str], task: Task = Task.sequence_classification):
    """teacher.finetune=false: `src` must already be a classifier of the task over exactly `names`."""
    what, head = (("token classifier", "*ForTokenClassification") if task == Task.token_classification
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
        task=str(task),  # a plain name: MLflow writes it into YAML
        input_example=input_example,
        pip_requirements=tracking.pip_requirements(TEACHER_PACKAGES),
    )
    model_uri = f"runs:/{tr.run_id}/teacher"
    tr.set_tags({"distilflow.teacher_uri": model_uri})
    return model_uri
