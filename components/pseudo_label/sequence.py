"""pseudo-label for sequence classification: the teacher's hard label, logits (float32) and the
chosen layer's [CLS]/mean representation (float16) per text; the pseudo contract of lib/contracts/data.py.
The shards, chunks, resume and merge are lib/contracts/shards.py's, driven by pseudo_label/__init__.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.lib.contracts import data
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig

TABLE = "pseudo"


def transfer_rows(path: Path) -> int:
    return data.transfer_rows(path)


def read_rows(path: Path, start: int, stop: int) -> Iterator[pa.Table]:
    return data.iter_transfer(path, start, stop)


def load_teacher(src):
    return T.load_teacher(src)


def describe(meta: dict) -> dict:
    """The table metadata of the teacher's outputs (pooled representation: pooling matters)."""
    return meta


def schema(num_labels: int, hidden: int | None, transfer_path: Path) -> pa.Schema:
    return data.pseudo_schema(num_labels, hidden)


def score_chunk(model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None, progress) -> tuple[np.ndarray, np.ndarray | None]:
    """Score one chunk window by window; the windows depend only on the chunk, so a resumed run
    forms the same batches (and gets the same bits) as an uninterrupted one."""
    tc = cfg.transfer
    texts = table.column("text").to_pylist()
    logits, reprs = [], []
    for w in range(0, len(texts), tc.sort_window):
        lg, rp = T.score(model, tokenizer, texts[w : w + tc.sort_window], tc.max_length, tc.batch_size,
                         layer=layer, pooling=tc.pooling, progress=progress)
        logits.append(lg)
        reprs.append(rp)
    return np.concatenate(logits), (np.concatenate(reprs) if layer is not None else None)




def chunk_table(table: pa.Table, logits: np.ndarray, reprs: np.ndarray | None, meta: dict, transfer_path: Path) -> pa.Table:
    return data.pseudo_table(table.column("id").to_pylist(), table.column("text").to_pylist(), logits, reprs, meta)


def shard_counts(chunk_files: list[Path]) -> dict[str, int]:
    return {}
