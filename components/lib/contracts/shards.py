"""Sharded, resumable Parquet writing for the pseudo-label step, both contracts: row ranges per
shard, chunk fingerprints (same fingerprint, same bytes), streaming writes with fixed row groups,
and the merge that checks every transfer id appears exactly once, in transfer order (and every
row's values, as a read does: lib/contracts/pseudo_values.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data, token_data
from components.lib.contracts.pseudo_values import check_pseudo_values
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PipelineConfig

log = logging.getLogger("distilflow.pseudo_label")
# Keys that differ between shards of one job; dropped from the merged table's metadata.
SHARD_KEYS = ("shard_index", "num_shards", "row_start", "row_stop", "fingerprint")
# Per-chunk counts of the token contract; summed into the shard's and the merged table's metadata.
COUNT_KEYS = ("words_total", "words_covered")


class MergeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    out_path: str
    rows: int
    shards: int
    words_total: int | None = None
    words_covered: int | None = None


def shard_range(total: int, index: int, num_shards: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of shard `index`; sizes differ by at most one."""
    return total * index // num_shards, total * (index + 1) // num_shards


def shard_file(pseudo_dir: Path, index: int, num_shards: int) -> Path:
    return Path(pseudo_dir) / "shards" / f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def fingerprint(meta: dict, cfg: PipelineConfig, transfer_path: Path, start: int, stop: int, total: int,
                device: str, dtype: str) -> str:
    """Everything that changes a stored number or a row: same fingerprint, same bytes. `device`
    (cpu, cuda, mps) and `dtype` (the teacher's compute dtype there, e.g. bfloat16 under CUDA
    autocast) are part of it, so a retry on another kind of machine rescores rather than mixing
    chunks of two precisions in one shard."""
    tc = cfg.transfer
    st = transfer_path.stat()
    key = {**meta, "batch_size": tc.batch_size, "sort_window": tc.sort_window, "chunk_rows": tc.chunk_rows,
           "row_group_rows": cfg.data.row_group_rows, "rows": [start, stop], "transfer": [st.st_size, total],
           "device": device, "compute_dtype": dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def stored_fingerprint(path: Path) -> str | None:
    try:
        return data.read_metadata(pq.read_schema(path)).get("fingerprint")
    except (OSError, pa.ArrowInvalid):
        return None  # a torn or foreign file: redo it


def write_stream(tables: Iterable[pa.Table], schema: pa.Schema, out_path: Path, row_group_rows: int) -> int:
    """Write tables as one Parquet file with row groups of exactly row_group_rows (the last may be
    short), atomically. Fixed row groups make the bytes independent of how the input was cut."""
    rows = 0
    with data.atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            pending: list[pa.Table] = []
            held = 0
            for table in tables:
                pending.append(table.cast(schema))
                held += len(table)
                while held >= row_group_rows:
                    buf = pa.concat_tables(pending)
                    writer.write_table(buf.slice(0, row_group_rows), row_group_size=row_group_rows)
                    rest = buf.slice(row_group_rows)
                    pending, held = [rest], len(rest)
                    rows += row_group_rows
            if held or rows == 0:
                writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table(), row_group_size=row_group_rows)
                rows += held
    return rows


def release_memory() -> None:
    """Hand freed heap pages back to the OS between chunks. glibc raises its mmap threshold after
    large tensors are freed, so later batches of other shapes land on the heap and fragment it;
    without a trim the peak RSS creeps up with the number of batches, i.e. with the transfer set."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def counts(path: Path) -> dict[str, int]:
    """words_total / words_covered stored in a pseudo-tokens file's metadata ({} for classification)."""
    meta = data.read_metadata(pq.read_schema(path))
    return {k: int(meta[k]) for k in COUNT_KEYS if k in meta}


def sum_counts(paths: Iterable[Path]) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in paths:
        for k, v in counts(p).items():
            total[k] = total.get(k, 0) + v
    return total


# ---------------------------------------------------------------- merge

def _transfer_ids(path: Path, batch_rows: int = 65536) -> Iterator[pa.Array]:
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["id"]):
        yield batch.column(0)


class _IdStream:
    """Hands out the transfer ids n at a time, reading only the id column."""

    def __init__(self, path: Path):
        self._it = _transfer_ids(path)
        self._buf: list[pa.Array] = []
        self._held = 0

    def take(self, n: int) -> pa.Array:
        while self._held < n:
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._buf.append(nxt)
            self._held += len(nxt)
        arr = pa.concat_arrays(self._buf) if self._buf else pa.array([], pa.string())
        out, rest = arr.slice(0, n), arr.slice(n)
        self._buf, self._held = [rest], len(rest)
        return out


def _diagnose(shard_files: Sequence[Path], transfer_path: Path) -> str:
    """Which ids are missing, duplicated or foreign (only on failure, so sets are affordable)."""
    expected = set()
    for ids in _transfer_ids(transfer_path):
        expected.update(ids.to_pylist())
    seen: Counter[str] = Counter()
    where: dict[str, str] = {}
    problems = []
    for f in shard_files:
        ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        seen.update(ids)
        for i in ids:
            where.setdefault(i, f.name)
        extra = [i for i in ids if i not in expected]
        if extra:
            problems.append(f"{f}: {len(extra)} ids not in {transfer_path} (e.g. {extra[:3]})")
    dups = [i for i, c in seen.items() if c > 1]
    if dups:
        problems.append(f"{len(dups)} ids appear more than once (e.g. {dups[:3]}, first in {where[dups[0]]})")
    missing = [i for i in expected if i not in seen]
    if missing:
        problems.append(f"{len(missing)} transfer ids missing from every shard (e.g. {sorted(missing)[:3]})")
    return "; ".join(problems) or "rows are not in transfer-set order"


def _is_token_table(schema: pa.Schema) -> bool:
    return "tokens" in schema.names or (schema.metadata or {}).get(data.META_TABLE) == b"pseudo-tokens"


def merge(shard_files: list[Path], transfer_path: Path, out_path: Path, row_group_rows: int = 2048,
          table: str | None = None) -> MergeResult:
    """Concatenate shards (ordered by their row range) into out_path, checking that every transfer
    id appears exactly once, in transfer order; a DataError names what is missing/duplicated.
    Either contract: pseudo (classification) or pseudo-tokens, told apart by the shards' columns
    (`table` given, the contract's table name: the shards must be of that contract)."""
    shard_files = [Path(f) for f in shard_files]
    if not shard_files:
        raise UserError("merge: no shard files given")
    token = None if table is None else table == "pseudo-tokens"
    metas = []
    for f in shard_files:
        pf = data.open_parquet(f)
        is_token = _is_token_table(pf.schema_arrow)
        if token is None:
            token = is_token
        if is_token != token:
            want = "pseudo-tokens (token-classification)" if token else "pseudo (sequence-classification)"
            raise DataError(f"{f}: not a {want} table")
        check = token_data.check_token_pseudo_schema if token else data.check_pseudo_schema
        metas.append((check(pf.schema_arrow, f), pf.schema_arrow, f))
    base, base_schema, base_file = metas[0]
    for meta, schema_f, f in metas[1:]:
        for key in ("teacher_digest", "layer", "pooling", "label_names", "max_length", "num_labels", "repr_dim", "task"):
            if meta.get(key) != base.get(key):
                raise DataError(f"{f}: metadata '{key}' = {meta.get(key)!r} differs from {base_file}'s {base.get(key)!r}")
        if schema_f.names != base_schema.names:
            raise DataError(f"{f}: columns {schema_f.names} differ from {base_file}'s {base_schema.names}")
    metas.sort(key=lambda m: (m[0].get("row_start", 0), str(m[2])))
    ordered = [f for _, _, f in metas]
    meta_of = {f: m for m, _, f in metas}
    out_meta = {k: v for k, v in base.items() if k not in SHARD_KEYS + ("num_labels", "repr_dim")}
    counts = {k: sum(int(m.get(k) or 0) for m, _, _ in metas) for k in COUNT_KEYS if k in base}
    out_meta.update(counts)
    schema = data.with_metadata(pa.schema(list(base_schema)), "pseudo-tokens" if token else "pseudo", out_meta)
    expected_rows = (token_data.token_transfer_rows if token else data.transfer_rows)(Path(transfer_path))
    ids = _IdStream(transfer_path)

    def checked() -> Iterator[pa.Table]:
        got = 0
        for f in ordered:
            pf = pq.ParquetFile(f)
            row = 0
            for rg in range(pf.num_row_groups):
                part = pf.read_row_group(rg)
                want = ids.take(len(part)).cast(pa.string())
                if not part.column("id").combine_chunks().cast(pa.string()).equals(want):
                    raise DataError(f"{f}: ids do not line up with {transfer_path}: {_diagnose(ordered, transfer_path)}")
                check_pseudo_values(part, f, meta_of[f], row0=row)
                row += len(part)
                got += len(part)
                yield part
        if got != expected_rows:
            raise DataError(f"{transfer_path} has {expected_rows} rows, the shards {got}: {_diagnose(ordered, transfer_path)}")

    rows = write_stream(checked(), schema, Path(out_path), row_group_rows)
    log.info("merged %d shards, %d rows -> %s", len(ordered), rows, out_path)
    return MergeResult(out_path=str(out_path), rows=rows, shards=len(ordered), **counts)


