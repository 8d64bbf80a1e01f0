"""pseudo-label hooks for token classification: per word the teacher saw (its first sub-piece;
`tokens` is cut to the words inside max_length) the tag, logits (float32) and the chosen layer's
hidden state (float16); the pseudo-tokens contract of lib/contracts/token_data.py. The metadata
also counts words_total / words_covered (summed over chunks and shards).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.lib.contracts import token_data
from components.lib.contracts.shards import COUNT_KEYS
from components.lib.core.errors import DataError, UserError
from components.lib.core.task import Task
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig

TABLE = "pseudo-tokens"
COUNTS = COUNT_KEYS
transfer_rows = token_data.token_transfer_rows
read_rows = token_data.iter_token_transfer


def load_teacher(src):
    model, tokenizer = T.load_teacher(src, task=Task.token_classification)
    if not T.head_is_trained(src, task=Task.token_classification):
        raise UserError(f"{src}: not a fine-tuned token classifier (no *ForTokenClassification head); run "
                        "finetune-teacher with task: token-classification or point transfer.teacher at one")
    return model, tokenizer


def describe(meta: dict) -> dict:
    """The representation is per word (first sub-piece): no pooling."""
    return {**{k: v for k, v in meta.items() if k != "pooling"}, "task": Task.token_classification.value}


def schema(num_labels: int, hidden: int | None, transfer_path: Path) -> pa.Schema:
    return token_data.token_pseudo_schema(num_labels, hidden, "lang" in pq.read_schema(transfer_path).names)


def score_chunk(model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None,
                progress) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per row (n_i, C) logits and (n_i, H) reprs (float32) of the n_i leading words inside
    max_length, window by window as sequence.score_chunk."""
    tc = cfg.transfer
    sents = table.column("tokens").to_pylist()
    logits: list[np.ndarray] = []
    reprs: list[np.ndarray] = []
    for w in range(0, len(sents), tc.sort_window):
        lg, rp = T.score_words(model, tokenizer, sents[w : w + tc.sort_window], tc.max_length, tc.batch_size,
                               layer=layer, progress=progress)
        logits += lg
        reprs += rp or []
    return logits, (reprs if layer is not None else None)


def chunk_table(table: pa.Table, logits: list[np.ndarray], reprs: list[np.ndarray] | None, meta: dict,
                transfer_path: Path) -> pa.Table:
    """A pseudo-tokens chunk: each row cut to the words the teacher saw; this chunk's word counts
    go into its metadata (summed into the shard's)."""
    sents = table.column("tokens").to_pylist()
    ids = table.column("id").to_pylist()
    covered = [len(x) for x in logits]
    if covered and min(covered) == 0:  # only when the tokenizer drops every word of the row
        raise DataError(f"{transfer_path}: row id {ids[covered.index(0)]!r}: the teacher's tokenizer gives no piece "
                        "for any of its words (nothing to label)")
    counts = {"words_total": sum(len(s) for s in sents), "words_covered": sum(covered)}
    langs = table.column("lang").to_pylist() if "lang" in table.column_names else None
    return token_data.token_pseudo_table(ids, [s[:n] for s, n in zip(sents, covered, strict=True)], logits, reprs,
                                         {**meta, **counts}, langs)

