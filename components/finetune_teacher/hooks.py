"""What finetune-teacher's one run() (components/finetune_teacher/__init__.py) asks of a task: a
module of plain functions and constants that satisfies TeacherHooks (sequence.py, tokens.py).

`train` and `dev` are the task's labeled splits, as its `read` returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from components.lib.core.task import Task
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking


class TeacherHooks(Protocol):
    TASK: Task  # the head loaded (a fresh one to fine-tune, or the trained one checked)
    DEV_METRICS: tuple[str, ...]  # the Trainer's dev metrics every epoch; the first selects the epoch
    SCORES: tuple[str, ...]  # the report's dev scores the result carries; DONE_LOG begins with them
    FIT_LOG: str  # logged before fine-tuning: % the model ref, M params, train and dev sizes
    DONE_LOG: str  # logged at the end: % SCORES, best epoch, epochs run, examples/s, seconds, output dir
    Result: type[BaseModel]  # the step's result model

    def read(self, path: Path) -> Any:
        """One labeled split (with its label_names)."""
        ...

    def params(self, train: Any, dev: Any) -> dict[str, Any]:
        """The MLflow params of the data, beside the teacher settings and the label names."""
        ...

    def fit_inputs(self, cfg: PipelineConfig, tokenizer, train: Any, dev: Any) -> tuple[Any, Any, Any, Any]:
        """(train Dataset, dev Dataset, collator, compute_metrics) for lib/training/finetune.fit."""
        ...

    def report(self, model, tokenizer, train: Any, dev: Any, cfg: PipelineConfig) -> dict[str, Any]:
        """The task's entries of metrics.json: the fine-tuned model's dev scores (SCORES among them)."""
        ...

    def run_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        """The MLflow metrics of the run's end taken from the report."""
        ...

    def log_model(self, tr: tracking.StepTracker, model, tokenizer, dev: Any) -> str | None:
        """Log the teacher as an MLflow transformers model; its runs:/ URI."""
        ...
