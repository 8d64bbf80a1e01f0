"""export: ONNX (+ int8) with a parity check, an MLflow pyfunc over raw text, the registry gate
(sequence.py: labels with probabilities; tokens.py: entity spans). ONNX machinery is
lib/publish/onnx.py's, the pyfunc bundle and the champion gate lib/publish/registry.py's.

    python -m components.export --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

from components.export import sequence, tokens
from components.export.sequence import ExportResult
from components.export.tokens import TokenExportResult
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig

__all__ = ["run", "main", "ExportResult", "TokenExportResult"]


def run(cfg: PipelineConfig) -> ExportResult | TokenExportResult:
    """The step for cfg.task: one code path per task, the shared machinery below them in lib/."""
    return (tokens if cfg.is_token_task else sequence).run(cfg)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Export the student: ONNX (+int8), an MLflow pyfunc, registry with a quality gate", argv)
