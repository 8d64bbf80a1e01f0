"""Parquet contracts: the schemas the steps exchange, validated reads, atomic writes.

Every table a step reads or writes goes through here, so a wrong file fails at the boundary
with one line naming the file and column, and no reader ever sees a half-written file.

| table       | columns                                                             |
| labeled     | id: string, text: string, label: int64                              |
| transfer    | id: string, text: string                                            |
| pseudo      | id, text, teacher_label: int64, teacher_logits: fixed_size_list<f32>[C],
|             | teacher_repr: fixed_size_list<f16>[H] (optional)                    |

A pseudo table is checked on read (and on merge): C = len(label_names), H = the metadata's
hidden_size, teacher_label in [0, C), logits and representations finite (lib/contracts/pseudo_values.py).

The token-classification contracts (labeled-tokens, transfer-tokens, pseudo-tokens) are
lib/contracts/token_data.py's, built on the file machinery here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.lib.contracts.files import (  # noqa: F401  (data.atomic_dir & co: the steps' one import for their files)
    atomic_dir,
    atomic_path,
    sha256_dir,
    sha256_file,
    write_json,
)
from components.lib.contracts.pseudo_values import check_pseudo_values, check_widths
from components.lib.core.errors import DataError

META_LABEL_NAMES = b"distilflow.label_names"
META_TABLE = b"distilflow.table"
META_PREFIX = "distilflow."

LABELED_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int64())])
TRANSFER_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def pseudo_schema(num_labels: int, repr_dim: int | None) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("text", pa.string()),
        ("teacher_label", pa.int64()),
        ("teacher_logits", pa.list_(pa.float32(), num_labels)),
    ]
    if repr_dim:
        fields.append(("teacher_repr", pa.list_(pa.float16(), repr_dim)))
    return pa.schema(fields)


# ---------------------------------------------------------------- metadata

def with_metadata(schema: pa.Schema, table: str, meta: dict[str, object] | None = None) -> pa.Schema:
    """Attach distilflow.* metadata; values are JSON-encoded."""
    md = dict(schema.metadata or {})
    md[META_TABLE] = table.encode()
    for key, value in (meta or {}).items():
        md[(META_PREFIX + key).encode()] = json.dumps(value).encode()
    return schema.with_metadata(md)


def read_metadata(schema: pa.Schema) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in (schema.metadata or {}).items():
        k = key.decode()
        if k.startswith(META_PREFIX) and key != META_TABLE:
            try:
                out[k[len(META_PREFIX):]] = json.loads(value)
            except ValueError:
                out[k[len(META_PREFIX):]] = value.decode()
    return out


# ---------------------------------------------------------------- atomic output

def write_table(table: pa.Table, path: str | Path, row_group_rows: int = 2048) -> None:
    """Write atomically; deterministic bytes for equal tables (no timestamps in Parquet)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows, compression="zstd")


def labeled_table(ids: list[str], texts: list[str], labels: list[int], label_names: list[str]) -> pa.Table:
    schema = with_metadata(LABELED_SCHEMA, "labeled", {"label_names": list(label_names)})
    table = pa.table({"id": ids, "text": texts, "label": labels}, schema=schema)
    _check_labeled(table, "<new table>", list(label_names))
    return table


def transfer_table(ids: list[str], texts: list[str], meta: dict[str, object] | None = None) -> pa.Table:
    schema = with_metadata(TRANSFER_SCHEMA, "transfer", {"rows": len(ids), **(meta or {})})
    table = pa.table({"id": ids, "text": texts}, schema=schema)
    _check_texts(table, "<new table>")
    return table


def pseudo_table(
    ids: list[str],
    texts: list[str],
    logits: np.ndarray,
    reprs: np.ndarray | None,
    meta: dict[str, object],
) -> pa.Table:
    """logits (N, C) float32; reprs (N, H) stored as float16; teacher_label = argmax of logits."""
    logits = np.asarray(logits, dtype=np.float32)
    n, c = logits.shape
    schema = with_metadata(pseudo_schema(c, None if reprs is None else reprs.shape[1]), "pseudo", meta)
    cols = {
        "id": pa.array(ids, pa.string()),
        "text": pa.array(texts, pa.string()),
        "teacher_label": pa.array(logits.argmax(axis=1).astype(np.int64)),
        "teacher_logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), c),
    }
    if reprs is not None:
        r = np.asarray(reprs, dtype=np.float16)
        cols["teacher_repr"] = pa.FixedSizeListArray.from_arrays(pa.array(r.reshape(-1)), r.shape[1])
    return pa.table(cols, schema=schema)


# ---------------------------------------------------------------- validated reads

def open_parquet(path: str | Path) -> pq.ParquetFile:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: expected a Parquet file, found a directory")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def check_columns(schema: pa.Schema, path: str | Path, expected: pa.Schema) -> None:
    for field in expected:
        if field.name not in schema.names:
            raise DataError(f"{path}: column '{field.name}' missing (expected {field.type})")
        got = schema.field(field.name).type
        if got != field.type and not (pa.types.is_large_string(got) and field.type == pa.string()):
            raise DataError(f"{path}: column '{field.name}' has type {got}, expected {field.type}")


def _check_texts(table: pa.Table, path: str | Path) -> None:
    ids, texts = table.column("id"), table.column("text")
    if ids.null_count:
        raise DataError(f"{path}: column 'id' has {ids.null_count} null values")
    if texts.null_count:
        raise DataError(f"{path}: column 'text' has {texts.null_count} null values")
    empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)).as_py()
    if empty:
        raise DataError(f"{path}: column 'text' has {empty} empty values")


def _check_labeled(table: pa.Table, path: str | Path, label_names: list[str]) -> None:
    _check_texts(table, path)
    labels = table.column("label")
    if labels.null_count:
        raise DataError(f"{path}: column 'label' has {labels.null_count} null values")
    if len(table):
        lo, hi = pc.min(labels).as_py(), pc.max(labels).as_py()
        if lo < 0 or hi >= len(label_names):
            bad = lo if lo < 0 else hi
            raise DataError(f"{path}: column 'label' has value {bad} outside 0..{len(label_names) - 1} ({label_names})")


def label_names_meta(schema: pa.Schema, path: str | Path) -> list[str]:
    names = read_metadata(schema).get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: schema metadata 'distilflow.label_names' missing or not a list of names")
    return names


@dataclass(frozen=True)
class Labeled:
    table: pa.Table
    label_names: list[str]


def read_labeled(path: str | Path) -> Labeled:
    pf = open_parquet(path)
    schema = pf.schema_arrow
    check_columns(schema, path, LABELED_SCHEMA)
    names = label_names_meta(schema, path)
    table = pf.read(columns=LABELED_SCHEMA.names).cast(with_metadata(LABELED_SCHEMA, "labeled", {"label_names": names}))
    _check_labeled(table, path, names)
    return Labeled(table, names)


def read_splits(data_dir: Path, names: Sequence[str], read: Callable[[Path], Any]) -> dict[str, Any]:
    """Read data_dir/<name>.parquet for each name with `read` (read_labeled, or token_data's
    read_token_labeled) and check that every split has the first one's label names."""
    splits = {name: read(data_dir / f"{name}.parquet") for name in names}
    first = names[0]
    for name in names[1:]:
        if splits[name].label_names != splits[first].label_names:
            raise DataError(f"{data_dir / f'{name}.parquet'}: label names {splits[name].label_names} "
                            f"differ from {first}'s {splits[first].label_names}")
    return splits


def read_transfer(path: str | Path) -> pa.Table:
    pf = open_parquet(path)
    check_columns(pf.schema_arrow, path, TRANSFER_SCHEMA)
    table = pf.read(columns=TRANSFER_SCHEMA.names)
    _check_texts(table, path)
    return table


def transfer_rows(path: str | Path) -> int:
    pf = open_parquet(path)
    check_columns(pf.schema_arrow, path, TRANSFER_SCHEMA)
    return pf.metadata.num_rows


def iter_transfer(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
    """Stream rows [start, stop) of a transfer table one row group at a time (bounded memory)."""
    pf = open_parquet(path)
    check_columns(pf.schema_arrow, path, TRANSFER_SCHEMA)
    yield from row_groups(pf, path, TRANSFER_SCHEMA.names, start, stop, _check_texts)


def row_groups(pf: pq.ParquetFile, path: str | Path, columns: list[str], start: int, stop: int | None,
                check) -> Iterator[pa.Table]:
    """Rows [start, stop) of `columns`, read and validated one row group at a time."""
    stop = pf.metadata.num_rows if stop is None else stop
    offset = 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            part = pf.read_row_group(rg, columns=columns).slice(lo - offset, hi - lo)
            check(part, path)
            yield part
        offset += n
        if offset >= stop:
            break


def check_pseudo_schema(schema: pa.Schema, path: str | Path) -> dict[str, object]:
    """Validate a pseudo-labeled schema; returns its metadata with num_labels and repr_dim added."""
    for name in ("id", "text", "teacher_label", "teacher_logits"):
        if name not in schema.names:
            raise DataError(f"{path}: column '{name}' missing (pseudo-labeled contract)")
    logits_t = schema.field("teacher_logits").type
    if not (pa.types.is_fixed_size_list(logits_t) and logits_t.value_type == pa.float32()):
        raise DataError(f"{path}: column 'teacher_logits' has type {logits_t}, expected fixed_size_list<float32>[C]")
    if schema.field("teacher_label").type != pa.int64():
        raise DataError(f"{path}: column 'teacher_label' has type {schema.field('teacher_label').type}, expected int64")
    meta = read_metadata(schema)
    meta["num_labels"] = logits_t.list_size
    meta["repr_dim"] = None
    if "teacher_repr" in schema.names:
        repr_t = schema.field("teacher_repr").type
        if not (pa.types.is_fixed_size_list(repr_t) and repr_t.value_type == pa.float16()):
            raise DataError(f"{path}: column 'teacher_repr' has type {repr_t}, expected fixed_size_list<float16>[H]")
        meta["repr_dim"] = repr_t.list_size
    check_widths(meta, path)
    return meta


def read_pseudo(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, dict[str, object]]:
    pf = open_parquet(path)
    meta = check_pseudo_schema(pf.schema_arrow, path)
    if columns and "teacher_repr" in columns and meta["repr_dim"] is None:
        raise DataError(f"{path}: column 'teacher_repr' missing (run pseudo-labelling with transfer.keep_repr=true)")
    table = pf.read(columns=columns)
    check_pseudo_values(table, path, meta)
    return table, meta


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, dtype: type = np.float32) -> np.ndarray:
    """(N,) fixed_size_list<T>[D] -> (N, D) ndarray without a Python loop."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(dtype, copy=False)
