"""finetune-teacher: fine-tune the encoder on the labeled train split, dev for early stopping.

Reads <data_dir>/{train,dev}.parquet (never test), trains with the Hugging Face Trainer (so
`torchrun --nproc-per-node N -m components.finetune_teacher` is data parallel with no new code),
evaluates on dev every epoch, stops early and keeps the best dev epoch. Writes a Hugging Face
model dir + tokenizer + metrics.json to cfg.teacher_dir, and logs the run and the model (an MLflow
`transformers` model under `teacher`, so `runs:/<id>/teacher` is a model ref). With
teacher.finetune=false the model is taken as already fine-tuned: its labels are checked against
the data's, dev is scored, and it is saved as the output. The Trainer checkpoints every epoch
beside the output (lib/training/finetune.checkpoint_dir); a killed run resumes from the last one
when the settings, data and starting weights are the same, and the checkpoints go once the
output is written.

run() below is the step for every task; what differs by task (the split reader, the encoding,
collator and dev metric, the head, the result) are the TeacherHooks (hooks.py) of the module
TASKS names: sequence.py (a sequence classifier), tokens.py (a token classifier). The Trainer
set-up, the finetune=false check, the output dir and the MLflow model logging are
lib/training/finetune.py's.

    python -m components.finetune_teacher --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel
from transformers import set_seed

from components.finetune_teacher import sequence, tokens
from components.finetune_teacher.hooks import TeacherHooks
from components.finetune_teacher.sequence import FinetuneResult
from components.finetune_teacher.tokens import TokenFinetuneResult
from components.lib.contracts import data
from components.lib.core.task import Task
from components.lib.core.torch_utils import count_parameters
from components.lib.models import teacher as T
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from components.lib.training import finetune as F

__all__ = ["run", "main", "fit", "TASKS", "TeacherHooks", "FinetuneResult", "TokenFinetuneResult"]

log = logging.getLogger("distilflow.finetune_teacher")
TASKS: dict[Task, TeacherHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}


def fit(cfg: PipelineConfig, hooks: TeacherHooks, model, tokenizer, train, dev, ckpt_dir: Path,
        fingerprint: str):
    """(trainer, per-epoch history, train examples/s, epochs resumed): lib/training/finetune.fit
    on the task's encoding, collator and dev metric."""
    train_ds, dev_ds, collator, compute_metrics = hooks.fit_inputs(cfg, tokenizer, train, dev)
    return F.fit(cfg, model, tokenizer, train_ds, dev_ds, collator, compute_metrics, hooks.DEV_METRICS, ckpt_dir,
                 fingerprint)


def _teacher(cfg: PipelineConfig, hooks: TeacherHooks, src, names: list[str], train, dev):
    """(model, tokenizer, per-epoch history, train examples/s, epochs resumed, whether this is rank 0):
    fine-tuned, or with teacher.finetune=false the model as given, checked."""
    tc = cfg.teacher
    if not tc.finetune:
        model, tokenizer = F.load_finetuned(src, tc.model, names, task=hooks.TASK)
        return model, tokenizer, {}, None, 0, True
    # Seed before the fresh classifier head is initialised: Trainer seeds only later,
    # so without this two runs with the same seed start from different heads.
    set_seed(tc.seed)
    model, tokenizer = T.load_teacher(src, label_names=names, task=hooks.TASK)
    log.info(hooks.FIT_LOG, tc.model, count_parameters(model) / 1e6, len(train.table), len(dev.table))
    fingerprint = F.run_fingerprint(cfg, [cfg.data_dir / f"{s}.parquet" for s in ("train", "dev")], src, model)
    ckpt_dir = F.checkpoint_dir(cfg.teacher_dir)
    trainer, history, ex_per_s, resumed = fit(cfg, hooks, model, tokenizer, train, dev, ckpt_dir, fingerprint)
    return trainer.model, tokenizer, history, ex_per_s, resumed, trainer.is_world_process_zero()


def run(cfg: PipelineConfig) -> BaseModel:
    """The step for cfg.task: a FinetuneResult, or a TokenFinetuneResult for token classification."""
    hooks = TASKS[cfg.task]
    tc = cfg.teacher
    t0 = time.perf_counter()
    F.set_threads(tc.num_threads)
    splits = data.read_splits(cfg.data_dir, ("train", "dev"), hooks.read)
    train, dev = splits["train"], splits["dev"]
    names = train.label_names
    src = tracking.resolve_model_ref(tc.model, cfg)

    with tracking.step_run(cfg, F.STEP) as tr:
        tr.log_params({"teacher": tc.model_dump(mode="json"), **hooks.params(train, dev),
                       "label_names": names})
        model, tokenizer, history, ex_per_s, resumed, is_main = _teacher(cfg, hooks, src, names, train, dev)
        params = count_parameters(model)
        common = {"teacher_dir": str(cfg.teacher_dir), "label_names": names, "epochs_run": len(history),
                  "epochs_resumed": resumed, "train_examples_per_s": ex_per_s, "params": params}
        if not is_main:  # other torchrun ranks: rank 0 writes the output and logs
            return hooks.Result(**common, **dict.fromkeys(hooks.SCORES, float("nan")), best_epoch=None,
                                seconds=time.perf_counter() - t0, mlflow_run_id=None, model_uri=None)
        model.eval()
        report = hooks.report(model, tokenizer, train, dev, cfg)
        best = F.best_epoch(history, f"dev_{hooks.DEV_METRICS[0]}")
        seconds = time.perf_counter() - t0
        F.save_teacher(cfg.teacher_dir, model, tokenizer, {
            **report,
            "best_epoch": best,
            "epochs_run": len(history),
            "history": [{"epoch": ep, **h} for ep, h in sorted(history.items())],
            "train_examples_per_s": ex_per_s,
            "params": params,
            "seconds": seconds,
            "finetuned": tc.finetune,
            "label_names": names,
            "source": tc.model,
        })
        log.info(hooks.DONE_LOG, *(report[k] for k in hooks.SCORES), best, len(history), ex_per_s or 0.0,
                 seconds, cfg.teacher_dir)
        model_uri = _log_run(tr, cfg, hooks, model, tokenizer, dev, history, {
            **hooks.run_metrics(report), "best_epoch": best or 0, "params": params, "seconds": seconds,
            **({"train_examples_per_s": ex_per_s} if ex_per_s else {})})
        return hooks.Result(**common, **{k: report[k] for k in hooks.SCORES}, best_epoch=best,
                            seconds=seconds, mlflow_run_id=tr.run_id, model_uri=model_uri)


def _log_run(tr: tracking.StepTracker, cfg: PipelineConfig, hooks: TeacherHooks, model, tokenizer, dev,
             history: dict[int, dict[str, float]], final: dict[str, float]) -> str | None:
    """The per-epoch and final metrics, the output dir and the MLflow model; the model's URI."""
    for ep, h in sorted(history.items()):
        tr.log_metrics(h, step=ep)
    tr.log_metrics(final)
    if tr.run_id is None:
        return None
    tr.log_artifacts(cfg.teacher_dir, "teacher_dir")
    return hooks.log_model(tr, model, tokenizer, dev)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Fine-tune the teacher on the labeled train split (dev for early stopping).", argv)
