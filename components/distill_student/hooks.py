"""What distill-student's driver (components/distill_student/__init__.py) needs of a task:
DistillHooks, which a task module satisfies with module-level functions and constants
(sequence.py: one label per text; tokens.py: one tag per word), and TaskRows, what the driver
asks of the training rows such a module builds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

from components.lib.core.student import BiLSTMStudent
from components.lib.training.distill import DistillResult, Phase

# Per split: the teacher's piece ids of each row, and the first piece of each of its words the
# pieces cover (None for texts: no words to place).
Pieces = dict[str, tuple[list[np.ndarray], list[np.ndarray] | None]]


class TaskRows(Protocol):
    """Training rows in student ids with whichever targets a phase needs."""

    seqs: list[np.ndarray]  # student piece ids per row (int32)

    def subset(self, idx: np.ndarray) -> TaskRows:
        """The rows idx (sorted), with their targets."""
        ...


@runtime_checkable
class DistillHooks(Protocol):
    """A task of distill-student: reading its rows, its loss and dev score, and how it reports them."""

    NOUN: str  # the model in the log lines: "student", "tagger"
    METRIC: str  # the dev score each epoch logs, early stopping names and the final line reports
    HEADLINE: str  # METRIC in the final log line ("dev accuracy")
    SCORES: tuple[str, ...]  # the final dev scores metrics.json keeps
    LOGGED: tuple[str, ...]  # the final dev scores logged to MLflow, as final.<score>
    RECORDED: dict[str, Any]  # added to the run's params and metrics.json, and as distilflow.<key> to its tags
    TEXTS: str  # the column a split's (or the transfer set's) rows are tokenised from
    read_split: Callable[[Path], Any]  # data_dir/<split>.parquet -> .table and .label_names (data.read_splits)
    read_transfer: Callable[[Path], pa.Table]  # data_dir/transfer.parquet: the baseline's vocabulary only

    def read_pseudo(self, path: Path, with_repr: bool, label_names: list[str]) -> tuple[list, dict[str, np.ndarray]]:
        """pseudo.parquet -> the transfer rows' TEXTS and the teacher's targets (transfer_rows'
        `targets`; "reprs" (N or W, R) only with_repr), checked against the train split's label names."""
        ...

    def teacher_pieces(self, cache_dir: Path, tokenizer: Any, max_length: int, texts: dict[str, list],
                       sources: list[Path]) -> Pieces:
        """Each split's texts in teacher pieces, cut to max_length, cached under cache_dir by (tokenizer,
        max_length, the sources' bytes)."""
        ...

    def labeled_rows(self, split: Any, seqs: list[np.ndarray], firsts: list[np.ndarray] | None, decoding: str) -> TaskRows:
        """A labeled split (train or dev) in student ids with its gold targets; `decoding`
        (evaluate.decoding) is how a tagger's dev score turns logits into tags."""
        ...

    def transfer_rows(self, seqs: list[np.ndarray], firsts: list[np.ndarray] | None,
                      targets: dict[str, np.ndarray]) -> TaskRows:
        """The transfer set in student ids with the teacher's targets (read_pseudo)."""
        ...

    def hard_pool(self, transfer: TaskRows, train: TaskRows) -> TaskRows:
        """Mode hard: the teacher's labels over the transfer set and the gold train labels, one pool."""
        ...

    def phase_loss(self, phase: Phase, model: BiLSTMStudent, rows: TaskRows, idx: np.ndarray, s: Any) -> torch.Tensor:
        """The loss of phase.target (repr, soft, hard or labels) on the rows idx (train_phases' loss_fn)."""
        ...

    def evaluate_phase(self, phase: Phase, model: BiLSTMStudent, dev: TaskRows, val: TaskRows | None,
                       s: Any) -> dict[str, float]:
        """The dev scores (METRIC, SCORES) and "score" (higher is better; stage 1: the held-out val
        rows' repr loss) (train_phases' evaluate_fn)."""
        ...

    def result(self, final: dict[str, float], **fields: Any) -> DistillResult:
        """The step's result: the final dev scores and the driver's fields (mode, student_dir, ...)."""
        ...
