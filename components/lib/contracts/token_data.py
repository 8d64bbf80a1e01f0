"""Parquet contracts of token classification: schemas, table builders, validated reads.

| table            | columns                                                                  |
| labeled-tokens   | id: string, tokens: list<string>, tags: list<int64>, lang: string (opt.)  |
| transfer-tokens  | id: string, tokens: list<string>, lang: string (optional)                |
| pseudo-tokens    | id, tokens, teacher_tags: list<int64>, teacher_logits: list<fsl<f32>[C]>, |
|                  | teacher_repr: list<fsl<f16>[H]> (optional), lang (optional)              |

Every per-word list has one entry per word of `tokens` (the teacher's value at the word's
first sub-piece). Pseudo rows keep only the words the teacher saw: `tokens` is cut to the
words inside transfer.max_length, so every list in a row has the same length. Pseudo tables are
checked on read as lib/contracts/data.py's: tags in [0, C), logits and representations finite, C and H
matching the metadata's label_names and hidden_size. The file-level machinery (atomic writes,
metadata, row-group streaming) is lib/contracts/data.py's, the value checks lib/contracts/pseudo_values.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.lib.contracts.data import (
    label_names_meta,
    open_parquet,
    read_metadata,
    row_groups,
    with_metadata,
)
from components.lib.contracts.pseudo_values import check_pseudo_values, check_widths
from components.lib.core.errors import DataError

TOKEN_LABELED_SCHEMA = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.string())), ("tags", pa.list_(pa.int64()))])
TOKEN_TRANSFER_SCHEMA = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.string()))])
LANG_FIELD = pa.field("lang", pa.string())


def _with_lang(schema: pa.Schema, langs: list[str] | None) -> pa.Schema:
    return schema.append(LANG_FIELD) if langs is not None else schema


def token_pseudo_schema(num_labels: int, repr_dim: int | None, with_lang: bool = False) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("teacher_tags", pa.list_(pa.int64())),
        ("teacher_logits", pa.list_(pa.list_(pa.float32(), num_labels))),
    ]
    if repr_dim:
        fields.append(("teacher_repr", pa.list_(pa.list_(pa.float16(), repr_dim))))
    schema = pa.schema(fields)
    return schema.append(LANG_FIELD) if with_lang else schema


def _check_tokens(table: pa.Table, path: str | Path) -> None:
    ids, tokens = table.column("id"), table.column("tokens")
    if ids.null_count:
        raise DataError(f"{path}: column 'id' has {ids.null_count} null values")
    if tokens.null_count:
        raise DataError(f"{path}: column 'tokens' has {tokens.null_count} null values")
    if not len(table):
        return
    lengths = pc.list_value_length(tokens)
    empty = pc.sum(pc.equal(lengths, 0)).as_py()
    if empty:
        raise DataError(f"{path}: column 'tokens' has {empty} empty sentences")
    words = pc.list_flatten(tokens)
    if words.null_count:
        raise DataError(f"{path}: column 'tokens' has {words.null_count} null words")
    blank = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(words)), 0)).as_py()
    if blank:
        raise DataError(f"{path}: column 'tokens' has {blank} empty or whitespace-only words")
    if "lang" in table.column_names and table.column("lang").null_count:
        raise DataError(f"{path}: column 'lang' has {table.column('lang').null_count} null values")


def _check_same_lengths(table: pa.Table, path: str | Path, column: str) -> None:
    want = pc.list_value_length(table.column("tokens"))
    got = pc.list_value_length(table.column(column))
    bad = pc.invert(pc.fill_null(pc.equal(want, got), False))
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad:
        first = pc.index(bad, True).as_py()
        raise DataError(
            f"{path}: column '{column}' row {first} (id {table.column('id')[first].as_py()!r}) has "
            f"{got[first].as_py()} entries for {want[first].as_py()} tokens ({n_bad} rows differ)"
        )


def _check_token_labeled(table: pa.Table, path: str | Path, label_names: list[str]) -> None:
    _check_tokens(table, path)
    if table.column("tags").null_count:
        raise DataError(f"{path}: column 'tags' has {table.column('tags').null_count} null values")
    _check_same_lengths(table, path, "tags")
    flat = pc.list_flatten(table.column("tags"))
    if flat.null_count:
        raise DataError(f"{path}: column 'tags' has {flat.null_count} null tags")
    if len(flat):
        lo, hi = pc.min(flat).as_py(), pc.max(flat).as_py()
        if lo < 0 or hi >= len(label_names):
            bad = lo if lo < 0 else hi
            raise DataError(f"{path}: column 'tags' has value {bad} outside 0..{len(label_names) - 1} ({label_names})")


def token_labeled_table(
    ids: list[str], tokens: list[list[str]], tags: list[list[int]], label_names: list[str], langs: list[str] | None = None
) -> pa.Table:
    """label_names are the tag names (e.g. O, B-PER, I-PER) in index order."""
    schema = with_metadata(_with_lang(TOKEN_LABELED_SCHEMA, langs), "labeled-tokens", {"label_names": list(label_names)})
    cols: dict[str, object] = {"id": ids, "tokens": tokens, "tags": tags}
    if langs is not None:
        cols["lang"] = langs
    table = pa.table(cols, schema=schema)
    _check_token_labeled(table, "<new table>", list(label_names))
    return table


def token_transfer_table(
    ids: list[str], tokens: list[list[str]], langs: list[str] | None = None, meta: dict[str, object] | None = None
) -> pa.Table:
    schema = with_metadata(_with_lang(TOKEN_TRANSFER_SCHEMA, langs), "transfer-tokens", {"rows": len(ids), **(meta or {})})
    cols: dict[str, object] = {"id": ids, "tokens": tokens}
    if langs is not None:
        cols["lang"] = langs
    table = pa.table(cols, schema=schema)
    _check_tokens(table, "<new table>")
    return table


def ragged_array(rows: list[np.ndarray], value_type: pa.DataType, width: int | None = None) -> pa.Array:
    """Per-row arrays (n_i,) or (n_i, width) -> list<value_type> or list<fixed_size_list<value_type>[width]>."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    np_type = value_type.to_pandas_dtype()
    if width is None:
        flat = np.concatenate(rows).astype(np_type) if rows else np.zeros(0, np_type)
        return pa.ListArray.from_arrays(offsets, pa.array(flat, value_type))
    flat = np.concatenate(rows).astype(np_type) if rows else np.zeros((0, width), np_type)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), value_type), width)
    return pa.ListArray.from_arrays(offsets, inner)


def token_pseudo_table(
    ids: list[str],
    tokens: list[list[str]],
    logits: list[np.ndarray],
    reprs: list[np.ndarray] | None,
    meta: dict[str, object],
    langs: list[str] | None = None,
) -> pa.Table:
    """logits[i] (n_i, C) float32 per word, reprs[i] (n_i, H) stored as float16; teacher_tags = argmax.
    tokens[i] must already be cut to the n_i words the teacher saw."""
    c = int(logits[0].shape[1]) if logits else int(meta.get("num_labels", 1))  # type: ignore[arg-type]
    h = None if reprs is None else (int(reprs[0].shape[1]) if reprs else int(meta.get("repr_dim", 1)))  # type: ignore[arg-type]
    schema = with_metadata(token_pseudo_schema(c, h, langs is not None), "pseudo-tokens", meta)
    cols: dict[str, object] = {
        "id": pa.array(ids, pa.string()),
        "tokens": pa.array(tokens, pa.list_(pa.string())),
        "teacher_tags": ragged_array([np.asarray(x).argmax(axis=1) for x in logits], pa.int64()),
        "teacher_logits": ragged_array([np.asarray(x, np.float32) for x in logits], pa.float32(), c),
    }
    if reprs is not None:
        cols["teacher_repr"] = ragged_array([np.asarray(x, np.float16) for x in reprs], pa.float16(), h)
    if langs is not None:
        cols["lang"] = pa.array(langs, pa.string())
    table = pa.table(cols, schema=schema)
    _check_tokens(table, "<new table>")
    _check_same_lengths(table, "<new table>", "teacher_logits")
    return table


@dataclass(frozen=True)
class TokenLabeled:
    table: pa.Table
    label_names: list[str]

    @property
    def has_lang(self) -> bool:
        return "lang" in self.table.column_names


def _check_list_column(schema: pa.Schema, path: str | Path, name: str, want: pa.DataType) -> None:
    if name not in schema.names:
        raise DataError(f"{path}: column '{name}' missing (expected {want})")
    got = schema.field(name).type
    ok = got == want or (
        pa.types.is_large_list(got) and got.value_type == want.value_type
    ) or (
        pa.types.is_list(got) and pa.types.is_large_string(got.value_type) and want.value_type == pa.string()
    )
    if not ok:
        raise DataError(f"{path}: column '{name}' has type {got}, expected {want}")


def _token_columns(schema: pa.Schema, path: str | Path, base: pa.Schema) -> list[str]:
    if "id" not in schema.names:
        raise DataError(f"{path}: column 'id' missing (expected string)")
    for field in base:
        if field.name != "id":
            _check_list_column(schema, path, field.name, field.type)
    names = list(base.names)
    if "lang" in schema.names:
        if not (pa.types.is_string(schema.field("lang").type) or pa.types.is_large_string(schema.field("lang").type)):
            raise DataError(f"{path}: column 'lang' has type {schema.field('lang').type}, expected string")
        names.append("lang")
    return names


def read_token_labeled(path: str | Path) -> TokenLabeled:
    pf = open_parquet(path)
    schema = pf.schema_arrow
    cols = _token_columns(schema, path, TOKEN_LABELED_SCHEMA)
    names = label_names_meta(schema, path)
    target = _with_lang(TOKEN_LABELED_SCHEMA, [] if "lang" in cols else None)
    table = pf.read(columns=cols).cast(with_metadata(target, "labeled-tokens", {"label_names": names}))
    _check_token_labeled(table, path, names)
    return TokenLabeled(table, names)


def read_token_transfer(path: str | Path) -> pa.Table:
    pf = open_parquet(path)
    cols = _token_columns(pf.schema_arrow, path, TOKEN_TRANSFER_SCHEMA)
    table = pf.read(columns=cols)
    _check_tokens(table, path)
    return table


def token_transfer_rows(path: str | Path) -> int:
    pf = open_parquet(path)
    _token_columns(pf.schema_arrow, path, TOKEN_TRANSFER_SCHEMA)
    return pf.metadata.num_rows


def iter_token_transfer(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
    """Stream rows [start, stop) of a token transfer table one row group at a time."""
    pf = open_parquet(path)
    cols = _token_columns(pf.schema_arrow, path, TOKEN_TRANSFER_SCHEMA)
    yield from row_groups(pf, path, cols, start, stop, _check_tokens)


def check_token_pseudo_schema(schema: pa.Schema, path: str | Path) -> dict[str, object]:
    """Validate a pseudo-tokens schema; returns its metadata with num_labels and repr_dim added."""
    for name in ("id", "tokens", "teacher_tags", "teacher_logits"):
        if name not in schema.names:
            raise DataError(f"{path}: column '{name}' missing (pseudo-labeled tokens contract)")

    def inner(name: str, value_type: pa.DataType, what: str) -> int:
        t = schema.field(name).type
        if not (pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type) and t.value_type.value_type == value_type):
            raise DataError(f"{path}: column '{name}' has type {t}, expected list<fixed_size_list<{value_type}>[{what}]>")
        return t.value_type.list_size

    _check_list_column(schema, path, "teacher_tags", pa.list_(pa.int64()))
    meta = read_metadata(schema)
    meta["num_labels"] = inner("teacher_logits", pa.float32(), "C")
    meta["repr_dim"] = inner("teacher_repr", pa.float16(), "H") if "teacher_repr" in schema.names else None
    check_widths(meta, path)
    return meta


def read_token_pseudo(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, dict[str, object]]:
    pf = open_parquet(path)
    meta = check_token_pseudo_schema(pf.schema_arrow, path)
    if columns and "teacher_repr" in columns and meta["repr_dim"] is None:
        raise DataError(f"{path}: column 'teacher_repr' missing (run pseudo-labelling with transfer.keep_repr=true)")
    table = pf.read(columns=columns)
    check_pseudo_values(table, path, meta)  # tags in range, logits and representations finite
    return table, meta


def ragged_to_numpy(col: pa.ChunkedArray | pa.Array, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """list<T> or list<fixed_size_list<T>[D]> -> (values (total,) or (total, D), offsets (N+1,)).
    Row i is values[offsets[i]:offsets[i+1]]; no Python loop."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    if pa.types.is_fixed_size_list(values.type):
        width = values.type.list_size
        flat = values.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    else:
        flat = values.to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False), offsets
