"""distill-student: train the BiLSTM student in stages, representation -> logits -> labels
(sequence.py: one label per text; tokens.py: one tag per word). Phases, gradual unfreezing,
early stopping and checkpoints are lib/training/distill.py's.

    python -m components.distill_student --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

from collections.abc import Callable

from components.distill_student import sequence, tokens
from components.distill_student.sequence import DistillResult
from components.distill_student.tokens import TokenDistillResult
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig

__all__ = ["run", "main", "DistillResult", "TokenDistillResult"]


def run(cfg: PipelineConfig, *, on_epoch: Callable[[dict], None] | None = None) -> DistillResult | TokenDistillResult:
    """The step for cfg.task: one code path per task, the shared machinery below them in lib/."""
    return (tokens if cfg.is_token_task else sequence).run(cfg, on_epoch=on_epoch)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Distil the teacher into a BiLSTM student (representation -> logits -> labels)", argv)
