"""Teacher fine-tuning machinery both tasks share: the Hugging Face Trainer set-up with dev
evaluation every epoch and early stopping, the finetune=false check, the output dir and the
MLflow model logging. The task modules (components/finetune_teacher/) bring the encoding,
the collator and the dev metric.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from components.lib.contracts import data
from components.lib.core.env import pip_requirements
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger("distilflow.finetune_teacher")
STEP = "finetune-teacher"
FINGERPRINT_FILE = "fingerprint.json"
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


# ---------------------------------------------------------------- checkpoints (resume after a kill)

def checkpoint_dir(out_dir: Path) -> Path:
    """The Trainer's epoch checkpoints, beside the step's output (which is only written, atomically,
    at the end): a killed fine-tuning resumes from them; removed once the output is complete."""
    return out_dir.parent / f".{out_dir.name}.ckpt"


def run_fingerprint(cfg: PipelineConfig, sources: Sequence[Path], src, model) -> str:
    """What the checkpoints must have been made with to be resumed: the teacher settings, the
    task, the decoding its dev score used, the data, the starting weights and the kind of machine
    (device, precision, ranks)."""
    cuda = torch.cuda.is_available()
    key = {"teacher": cfg.teacher.model_dump(mode="json", exclude={"output_dir"}), "task": str(cfg.task),
           "decoding": cfg.evaluate.decoding,
           "data": [data.sha256_file(p) for p in sources], "weights": T.weights_digest(src, model),
           "cuda": cuda, "bf16": cuda and torch.cuda.is_bf16_supported(), "world_size": os.environ.get("WORLD_SIZE", "1")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _trainer_state(ckpt: Path) -> dict | None:
    """A checkpoint's trainer_state.json (the Trainer writes it last: no file, a torn checkpoint)."""
    try:
        return json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def resume_point(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """The last complete checkpoint in ckpt_dir when it was made with these settings. Otherwise
    (rank 0) clear ckpt_dir and record the fingerprint the coming checkpoints are made with."""
    recorded = ckpt_dir / FINGERPRINT_FILE
    ckpts = sorted((p for p in ckpt_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: int(p.name.split("-")[1]))
    complete = [p for p in ckpts if _trainer_state(p) is not None]
    same = recorded.exists() and json.loads(recorded.read_text()).get("fingerprint") == fingerprint
    if same and complete:
        return complete[-1]
    if os.environ.get("RANK", "0") != "0":  # rank 0 clears and records; every rank decides alike
        return None
    if ckpts and not same:
        log.info("teacher checkpoints in %s were made with other settings (teacher config, data, weights or "
                 "device): starting over", ckpt_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    data.write_json(recorded, {"fingerprint": fingerprint})
    return None


def _stopped_at(state: dict, patience: int) -> int | None:
    """The step a checkpoint's run had already stopped at (early stopping fired), else None."""
    early = (state.get("stateful_callbacks") or {}).get("EarlyStoppingCallback") or {}
    counter = (early.get("attributes") or {}).get("early_stopping_patience_counter", 0)
    return int(state["global_step"]) if counter >= patience else None


# ---------------------------------------------------------------- training

def _trainer_class():
    """transformers' Trainer whose dev pass keeps the dataset's order. With train_sampling_strategy
    "group_by_length" transformers 5 groups the eval batches by length too (_get_eval_sampler), so
    the predictions come back permuted while compute_metrics reads them against dev's gold by index
    (measured: a 40-language teacher's dev F1 0.010 after its first epoch)."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class SequentialEvalTrainer(Trainer):
        def _get_eval_sampler(self, eval_dataset):
            if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
                return None
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # as transformers' default

    return SequentialEvalTrainer


def fit(cfg: PipelineConfig, model, tokenizer, train_ds, dev_ds, collator, compute_metrics, metrics: Sequence[str],
        ckpt_dir: Path, fingerprint: str):
    """Trainer fine-tuning shared by both tasks: dev evaluation every epoch, early stopping on
    metrics[0] (greater is better) with the best checkpoint restored. Checkpoints every epoch in
    ckpt_dir (full state: weights, optimizer, scheduler, RNG, early-stopping counter) and resumes
    from the last one made with the same `fingerprint`. Returns (trainer, per-epoch history
    {epoch: {dev_<metric>, dev_loss, train_loss}}, train examples/s, epochs restored by a resume)."""
    from transformers import EarlyStoppingCallback, TrainingArguments

    tc = cfg.teacher
    cuda = torch.cuda.is_available()
    resume = resume_point(ckpt_dir, fingerprint)
    state = _trainer_state(resume) if resume is not None else None
    # A run killed after early stopping fired (while restoring or saving the best model) must not
    # train on: ending at that checkpoint's step leaves the Trainer only the best model to load.
    stop_step = _stopped_at(state, tc.patience) if state else None
    resumed = round(state["epoch"]) if state else 0
    if state:
        log.info("resuming teacher fine-tuning from epoch %d of %d (%s)%s", resumed, tc.epochs, resume,
                 ": early stopping had fired, restoring the best epoch" if stop_step else "")
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        learning_rate=tc.lr,
        num_train_epochs=tc.epochs,
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=max(tc.batch_size, 32),
        train_sampling_strategy="group_by_length" if tc.group_by_length else "random",
        gradient_accumulation_steps=tc.grad_accum,
        warmup_steps=tc.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=tc.weight_decay,
        seed=tc.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_only_model=False,  # optimizer, scheduler and RNG state too, so a resumed run continues exactly
        restore_callback_states_from_checkpoint=True,  # the early-stopping counter
        max_steps=stop_step or -1,
        # The Trainer never rotates out the best checkpoint, and early stopping keeps it among the last patience + 1.
        save_total_limit=tc.patience + 1,
        load_best_model_at_end=True,
        metric_for_best_model=metrics[0],
        greater_is_better=True,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=tc.patience)],
        # Trainer's own AdamW unless the head gets its own lr or the embeddings stay fixed
        optimizers=(optimizer(model, tc), None) if tc.head_lr is not None or tc.freeze_embeddings else (None, None),
    )
    out = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
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
    return trainer, history, float(out.metrics.get("train_samples_per_second", 0.0)), resumed


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
    """The step's output, atomically: the Hugging Face dir (safetensors + tokenizer) + metrics.json;
    then its epoch checkpoints go (the output is complete: nothing to resume)."""
    with data.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        data.write_json(tmp / "metrics.json", metrics)
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)


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
        pip_requirements=pip_requirements(TEACHER_PACKAGES),
    )
    model_uri = f"runs:/{tr.run_id}/teacher"
    tr.set_tags({"distilflow.teacher_uri": model_uri})
    return model_uri
