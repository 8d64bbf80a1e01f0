"""evaluate: the one step that reads the test split. Teacher vs student(s) vs baseline:
quality, size and speed (sequence.py: accuracy, macro-F1, ECE; tokens.py: entity P/R/F1 per
type and language). Student discovery and the report body are lib/evaluation/protocol.py's.

    python -m components.evaluate --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

from pathlib import Path

from components.evaluate import sequence, tokens
from components.evaluate.sequence import EvalResult
from components.evaluate.tokens import TokenEvalResult
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig

__all__ = ["run", "main", "EvalResult", "TokenEvalResult"]


def run(cfg: PipelineConfig, student_dirs: dict[str, Path] | None = None) -> EvalResult | TokenEvalResult:
    """The step for cfg.task: one code path per task, the shared machinery below them in lib/."""
    return (tokens if cfg.is_token_task else sequence).run(cfg, student_dirs)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Evaluate teacher, student and baseline on the test split: quality, size, speed", argv)
