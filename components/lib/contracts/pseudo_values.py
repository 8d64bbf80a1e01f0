"""The values of a pseudo-labeled table, both contracts (lib/contracts/data.py's pseudo, lib/contracts/token_data.py's
pseudo-tokens): the logits as wide as the label names, the representation as the teacher's hidden
size, teacher labels/tags in [0, C), logits and representations finite. Checked where a table is
read or merged, and on the teacher's output before pseudo-label writes it; a DataError names the
file, the column and the first bad row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.lib.core.errors import DataError


def check_widths(meta: dict[str, object], path: str | Path) -> None:
    """The logits must be as wide as the label names, the representation as the teacher's hidden size."""
    names, hidden = meta.get("label_names"), meta.get("hidden_size")
    if isinstance(names, list) and len(names) != meta["num_labels"]:
        raise DataError(f"{path}: column 'teacher_logits' has {meta['num_labels']} values per entry, but the metadata "
                        f"names {len(names)} labels {names}")
    if meta["repr_dim"] is not None and isinstance(hidden, int) and hidden != meta["repr_dim"]:
        raise DataError(f"{path}: column 'teacher_repr' has {meta['repr_dim']} values per entry, but the teacher's "
                        f"hidden size (metadata 'hidden_size') is {hidden}")


def leaf_values(arr: pa.Array, path: str | Path, column: str) -> tuple[np.ndarray, Callable[[int], int]]:
    """The flat values of a column chunk (plain, list, fixed-size list or list of them) and a map
    from a value's index to its row in the chunk. Null rows or entries break the contract."""
    levels: list[int | np.ndarray] = []  # outermost first: a fixed width, or a list's offsets

    def row_of(i: int) -> int:
        for level in reversed(levels):
            i = i // level if isinstance(level, int) else int(np.searchsorted(level, i, side="right")) - 1
        return i

    while True:
        if arr.null_count:
            first = pc.index(pc.is_null(arr), True).as_py()
            raise DataError(f"{path}: column '{column}' row {row_of(first)}: null ({arr.null_count} nulls)")
        if pa.types.is_fixed_size_list(arr.type):
            levels.append(arr.type.list_size)
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            offsets = arr.offsets.to_numpy()
            levels.append(offsets - offsets[0])
        else:
            return arr.to_numpy(zero_copy_only=False), row_of
        arr = arr.flatten()


def check_pseudo_values(table: pa.Table, path: str | Path, meta: dict[str, object], row0: int = 0) -> None:
    """Teacher labels/tags in [0, num_labels), logits and representations finite. Vectorised over
    the flat values; a DataError names the column and the first bad row (counted from row0)."""
    num_labels = int(meta["num_labels"])  # type: ignore[arg-type]
    for name in ("teacher_label", "teacher_tags", "teacher_logits", "teacher_repr"):
        if name not in table.column_names:
            continue
        floats = name in ("teacher_logits", "teacher_repr")
        offset = row0
        for chunk in table.column(name).chunks:
            values, row_of = leaf_values(chunk, path, name)
            if not floats:
                ok = (values >= 0) & (values < num_labels)
            else:  # halves: an all-ones exponent is inf or nan (~3x faster than np.isfinite on float16)
                ok = (values.view(np.uint16) & 0x7C00) != 0x7C00 if values.dtype == np.float16 else np.isfinite(values)
            if not ok.all():
                i = int(np.argmin(ok))
                what = "is not finite" if floats else f"is outside 0..{num_labels - 1}"
                raise DataError(f"{path}: column '{name}' row {offset + row_of(i)}: value {values[i]} {what} "
                                f"({ok.size - np.count_nonzero(ok)} bad values)")
            offset += len(chunk)
