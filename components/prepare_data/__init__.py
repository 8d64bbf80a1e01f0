"""prepare-data: read a source, clean, de-duplicate, and make the low-resource
train/dev/test/transfer split (sequence.py: texts with a class label; tokens.py: sentences
with a tag per word).

    python -m components.prepare_data --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig
from components.prepare_data import sequence, tokens
from components.prepare_data.sequence import PrepareResult
from components.prepare_data.tokens import PrepareTokensResult

__all__ = ["run", "main", "PrepareResult", "PrepareTokensResult"]


def run(cfg: PipelineConfig) -> PrepareResult | PrepareTokensResult:
    """The step for cfg.task: one code path per task, the shared machinery below them in lib/."""
    return (tokens if cfg.is_token_task else sequence).run(cfg)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Ingest a labeled source and make the low-resource train/dev/test/transfer split.", argv)
