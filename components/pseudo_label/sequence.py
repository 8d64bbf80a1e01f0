"""pseudo-label hooks for sequence classification: the teacher's hard label, logits (float32) and
the chosen layer's [CLS]/mean representation (float16) per text; the pseudo contract of
lib/contracts/data.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from components.lib.contracts import data
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig

TABLE = "pseudo"
COUNTS: tuple[str, ...] = ()
transfer_rows = data.transfer_rows
read_rows = data.iter_transfer
load_teacher = T.load_teacher


def describe(meta: dict) -> dict:
    """A pooled representation: the metadata as given, pooling included."""
    return meta


def schema(num_labels: int, hidden: int | None, transfer_path: Path) -> pa.Schema:
    return data.pseudo_schema(num_labels, hidden)


def score_chunk(model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None,
                progress) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) logits and (N, H) reprs, window by window; the windows depend only on the chunk, so a
    resumed run forms the same batches (and gets the same bits) as an uninterrupted one."""
    tc = cfg.transfer
    texts = table.column("text").to_pylist()
    logits, reprs = [], []
    for w in range(0, len(texts), tc.sort_window):
        lg, rp = T.score(model, tokenizer, texts[w : w + tc.sort_window], tc.max_length, tc.batch_size,
                         layer=layer, pooling=tc.pooling, progress=progress, keep_tail=cfg.transfer_keep_tail)
        logits.append(lg)
        reprs.append(rp)
    return np.concatenate(logits), (np.concatenate(reprs) if layer is not None else None)


def chunk_table(table: pa.Table, logits: np.ndarray, reprs: np.ndarray | None, meta: dict,
                transfer_path: Path) -> pa.Table:
    return data.pseudo_table(table.column("id").to_pylist(), table.column("text").to_pylist(), logits, reprs,
                             meta)
