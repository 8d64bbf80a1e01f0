"""What evaluate does differently per task: the EvalHooks Protocol, which sequence.py and tokens.py
each satisfy with module-level functions and constants, and the two small records they share with
the run() skeleton in components/evaluate/__init__.py.

A model's "logits" are whatever its forward returns for a list of inputs: (N, C) for sequence
classification, one (n_covered_i, C) array per sentence for token classification. Only the hooks
read them; the skeleton passes them on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel

from components.lib.core.task import Task
from components.lib.settings.config import PipelineConfig

# forward(inputs) -> logits; the teacher's also takes progress=<callable(n_items_done)>
Forward = Callable[..., Any]
# onnx_forward(ort_session, inputs) -> logits, the same as the student's torch forward
OnnxForward = Callable[[Any, list], Any]


class Examples(NamedTuple):
    """One split as the metrics read it."""

    inputs: list  # texts, or pre-split sentences
    gold: Any  # (N,) label ids, or tag names per sentence
    langs: list[str] | None  # per row, when the split has a `lang` column


class LogLines(NamedTuple):
    """The step's progress bar and log lines in the task's words (%-style, arguments as named)."""

    progress: str  # tqdm description of the teacher's test pass
    unit: str  # tqdm unit
    scored: str  # % (test rows, seconds)
    teacher: str  # % (headline score, items/s, p50 ms)
    student: str  # % (mode, headline score, agreement, items/s torch, items/s ONNX)
    done: str  # % (retention, compression, speed-up, ONNX speed-up, report.json path)


@runtime_checkable
class EvalHooks(Protocol):
    """A task's part of evaluate; a module satisfies it (TASKS in components/evaluate maps Task -> module)."""

    log: logging.Logger  # where the task's lines go (its module's logger, as the step's lines always were)
    LOGGED_TASK: Task | None  # the run's `task` param and distilflow.task tag; None logs neither
    METRIC: str  # the headline score: retention, the dev block export decides on
    LINES: LogLines
    read_split: Callable[[Path], Any]  # the contract reader data.read_splits calls for test and dev

    def examples(self, splits: dict[str, Any], data_dir: Path) -> tuple[Examples, Examples]:
        """(test, dev) from the read splits; refuses a test split the step cannot measure."""
        ...

    def load_teacher(self, path: Path | str, max_length: int, batch_size: int, keep_tail: int = 0) -> tuple[Any, Forward]:
        """(model, forward) of the teacher checkpoint, refused when it is not a model for this task."""
        ...

    def load_student(self, path: Path, batch_size: int) -> tuple[Any, Forward, OnnxForward]:
        """(LoadedStudent, torch forward, ONNX Runtime forward), refused when it is not for this task."""
        ...

    def scores(self, logits: Any, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> tuple[dict, Any]:
        """(test metrics of one model, its predictions as agreement() reads them)."""
        ...

    def dev_scores(self, logits: Any, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> dict:
        """The dev-split scores export decides on (METRIC among them)."""
        ...

    def agreement(self, pred: Any, teacher_pred: Any) -> float:
        """Share of predictions on which a student and the teacher agree."""
        ...

    def classic_baseline(self, cfg: PipelineConfig, test: Examples, dev: Examples, label_names: list[str],
                         teacher_pred: Any) -> dict | None:
        """report.json's `tfidf` entry (a classic model on the same labeled rows, tuned on dev), or
        None where the task has none or evaluate.tfidf_baseline is false."""
        ...

    def student_fields(self, student: Any, ex: Examples) -> dict:
        """What a student's entry adds after the fields every model has."""
        ...

    def complete_report(self, rep: dict, test: Examples) -> dict:
        """report.json from build_report's body: the task's own keys added."""
        ...

    def logged_scores(self, rep: dict) -> dict:
        """The student/baseline scores (and the task's own blocks) logged as MLflow metrics."""
        ...

    def write_views(self, rep: dict, out: Path) -> None:
        """report.md and the plots into `out` (report.json is the skeleton's)."""
        ...

    def result(self, rep: dict, report_path: Path) -> BaseModel:
        """The step's result for kfp and the CLI."""
        ...
