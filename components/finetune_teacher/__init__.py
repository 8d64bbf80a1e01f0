"""finetune-teacher: fine-tune the encoder on the labeled train split, dev for early stopping
(sequence.py: a sequence classifier; tokens.py: a token classifier). The Trainer set-up, the
output dir and the MLflow model logging both share are lib/training/finetune.py's.

    python -m components.finetune_teacher --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

from components.finetune_teacher import sequence, tokens
from components.finetune_teacher.sequence import FinetuneResult
from components.finetune_teacher.tokens import TokenFinetuneResult
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig

__all__ = ["run", "main", "FinetuneResult", "TokenFinetuneResult"]


def run(cfg: PipelineConfig) -> FinetuneResult | TokenFinetuneResult:
    """The step for cfg.task: one code path per task, the shared machinery below them in lib/."""
    return (tokens if cfg.is_token_task else sequence).run(cfg)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Fine-tune the teacher on the labeled train split (dev for early stopping).", argv)
