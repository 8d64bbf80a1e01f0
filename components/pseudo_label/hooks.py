"""What pseudo-label's one driver (components/pseudo_label/__init__.py) asks of a task: a module
of plain functions and constants that satisfies PseudoHooks (sequence.py, tokens.py). The
transfer reader and the teacher loader may be lib functions bound to the hook's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from components.lib.settings.config import PipelineConfig


class PseudoHooks(Protocol):
    TABLE: str  # the contract's table name: the shard's metadata, and what the merge checks the shards are
    COUNTS: tuple[str, ...]  # per-chunk counts summed into the shard's metadata (0 when it has no chunk)

    def transfer_rows(self, path: Path) -> int:
        """The rows of the transfer table (checking its contract)."""
        ...

    def read_rows(self, path: Path, start: int, stop: int) -> Iterator[pa.Table]:
        """Transfer rows [start, stop), one row group at a time."""
        ...

    def load_teacher(self, src) -> tuple[Any, Any]:
        """(model, tokenizer) of the task's fine-tuned teacher."""
        ...

    def describe(self, meta: dict) -> dict:
        """The table metadata of the teacher's outputs, from the teacher's and the settings' facts."""
        ...

    def schema(self, num_labels: int, hidden: int | None, transfer_path: Path) -> pa.Schema:
        """The shard's columns (hidden: the representation's width, None without one)."""
        ...

    def score_chunk(self, model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None,
                    progress: Callable[[int], Any]) -> tuple[Any, Any]:
        """(logits, representations or None) of a chunk of transfer rows, in row order."""
        ...

    def chunk_table(self, table: pa.Table, logits: Any, reprs: Any, meta: dict,
                    transfer_path: Path) -> pa.Table:
        """The chunk's rows of the contract, with meta (and the chunk's COUNTS) as metadata."""
        ...
