"""prepare-data hooks for sequence classification: texts with a class label (PrepareHooks).

    train     N labeled examples per class (data.labels_per_class), sampled with data.seed
    dev       data.dev_per_class labeled examples per class (default min(10, labels_per_class): never
              more dev than train unless set), also from the source's train split
    test      the official test split (test_source / test_split) or a stratified held-out share
    transfer  the rest of train with labels dropped + the unlabeled source, shuffled, capped

Texts are cleaned (HTML tags, entities, whitespace) as they are read; the flow in
components/prepare_data/__init__.py then removes exact duplicates of the cleaned text within and
across splits and drops train, dev and transfer texts that are also in test.

    python -m components.prepare_data --config configs/imdb.yaml --set data.labels_per_class=50
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import DataConfig
from components.lib.sources.ingest import RawSource, open_source, unlabeled_split
from components.lib.sources.splits import (
    HOLDOUT,
    SAMPLE,
    SHUFFLE,
    check_texts,
    clean_texts,
    label_budgets,
    rng,
)
from components.prepare_data.hooks import Inputs

KEY, TARGET, NOUN, UNIT = "text", "label", "texts", "rows"
CONFLICTS = "duplicate_texts_with_conflicting_labels"
COUNT_DUPLICATES = False
TASK_FIELDS: dict[str, str] = {}  # the first task: its card and params never named it


class PrepareResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: str
    label_names: list[str]
    rows: dict[str, int]
    duplicates_removed: int
    overlap_removed: int
    seconds: float
    run_id: str | None = None


Result = PrepareResult


# ---------------------------------------------------------------- labels

@dataclass(frozen=True)
class LabelSpace:
    """Class names and how raw label values map onto their indices."""

    names: list[str]
    by_value: dict[str, int]  # str(raw value) -> index
    ints_are_indices: bool  # an integer raw label is the index itself
    origin: str  # which setting the names came from, for messages

    def encode(self, raw: pd.Series, where: str, column: str) -> np.ndarray:
        if raw.isna().any():
            raise DataError(f"{where}: column '{column}' has {int(raw.isna().sum())} null values (first at row {int(np.flatnonzero(raw.isna())[0])})")
        if pd.api.types.is_float_dtype(raw) and (raw == raw.round()).all():
            raw = raw.astype(np.int64)  # 1.0 from a CSV column is the label 1
        if self.ints_are_indices and pd.api.types.is_integer_dtype(raw):
            values = raw.to_numpy(np.int64)
            bad = (values < 0) | (values >= len(self.names))
            if bad.any():
                raise DataError(f"{where}: column '{column}' has value {values[bad][0]} outside 0..{len(self.names) - 1} (label names {self.names})")
            return values
        mapped = raw.astype(str).map(self.by_value)
        if mapped.isna().any():
            first = raw[mapped.isna()].iloc[0]
            first = first.item() if hasattr(first, "item") else first  # np.int64(2) -> 2
            raise DataError(f"{where}: column '{column}' has value {first!r} not among the label names {self.names} ({self.origin})")
        return mapped.to_numpy(np.int64)


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")  # how a label index reads in a CSV (all strings) or JSON


def _is_number(value: object) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, int | float | np.number) or (isinstance(value, str) and bool(NUMBER.fullmatch(value.strip())))


def _shown(values: list, quote: bool) -> str:
    head = [repr(v) if quote else str(v) for v in values[:3]]
    return ", ".join(head + (["..."] if len(values) > 3 else []))


def check_label_kinds(raw: pd.Series, where: str, column: str) -> None:
    """Refuse a label column mixing indices and names (0, 1 and 'money'): sorting them fails in
    JSON, and a CSV (all strings) would silently make '0' and 'money' two different classes."""
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return
    values = raw.dropna().unique().tolist()
    numbers = sorted((v for v in values if _is_number(v)), key=float)
    names = sorted(str(v) for v in values if not _is_number(v))
    if numbers and names:
        raise DataError(f"{where}: column '{column}' mixes numbers ({_shown(numbers, False)}) and names "
                        f"({_shown(names, True)}); use one kind, or map every value with data.label_map")


def _at_least_two(labels: LabelSpace, where: str, column: str) -> LabelSpace:
    # One class trains a teacher that is always right (dev accuracy 1.0) and distils nothing.
    if len(labels.names) >= 2:
        return labels
    found = f"one class ({labels.names[0]!r})" if labels.names else "no classes"
    if labels.origin.startswith("data."):
        raise UserError(f"config key '{labels.origin}': {found}; a classifier needs at least two")
    raise DataError(f"{where}: column '{column}' holds {found}; a classifier needs at least two "
                    "(check data.label_column and data.source)")


def label_space(dc: DataConfig, source: RawSource, raw_train: pd.Series, where: str | None = None) -> LabelSpace:
    """Names from data.label_map / data.label_names, a ClassLabel feature, or the sorted raw values;
    at least two, and never a mix of indices and names unless data.label_map maps them."""
    where = where or source.where
    if dc.label_map:
        names = list(dc.label_names or dict.fromkeys(dc.label_map.values()))
        for raw_value, name in dc.label_map.items():
            if name not in names:
                raise UserError(f"config key 'data.label_map': '{raw_value}' maps to '{name}', not in data.label_names {names}")
        labels = LabelSpace(names, {k: names.index(v) for k, v in dc.label_map.items()}, False, "data.label_map")
        return _at_least_two(labels, where, dc.label_column)
    check_label_kinds(raw_train, where, dc.label_column)
    given = dc.label_names or source.class_names.get(dc.label_column)
    if given:
        if len(set(given)) != len(given):
            raise UserError(f"config key 'data.label_names': duplicate names in {given}")
        origin = "data.label_names" if dc.label_names else f"{source.where} class names"
        return _at_least_two(LabelSpace(list(given), {n: i for i, n in enumerate(given)}, True, origin), where, dc.label_column)
    values = sorted(raw_train.dropna().unique().tolist())
    names = [str(v) for v in values]
    labels = LabelSpace(names, {n: i for i, n in enumerate(names)}, False, f"the values found in {source.where}")
    return _at_least_two(labels, where, dc.label_column)


# ---------------------------------------------------------------- raw -> checked, cleaned frames

def _ids(raw: pd.DataFrame, role: str, prefix: bool, label_names: pd.Series | None) -> tuple[pd.Series, str]:
    """`<role>/<id>` from an `id` column when unique, else `<role>/<label>/<id>`, else the row index."""
    pre = f"{role}/" if prefix else ""
    if "id" in raw.columns and raw["id"].notna().all():
        ids = raw["id"].astype(str)
        if ids.is_unique:
            return pre + ids, "id"
        if label_names is not None and (label_names + "/" + ids).is_unique:
            return pre + label_names + "/" + ids, "label/id"  # IMDB: pos/0 and neg/0 both exist
    return pre + pd.Series(np.arange(len(raw)), index=raw.index).astype(str), "row"


def labeled_frame(raw: pd.DataFrame, where: str, role: str, prefix: bool, dc: DataConfig, labels: LabelSpace) -> tuple[pd.DataFrame, str]:
    texts = check_texts(raw, where, dc.text_column, "data.text_column")
    if dc.label_column not in raw.columns:
        raise DataError(f"{where}: column '{dc.label_column}' missing (set data.label_column; columns: {list(map(str, raw.columns))})")
    if not dc.label_map:  # the test source too: a mix there is the same mistake as in train
        check_label_kinds(raw[dc.label_column], where, dc.label_column)
    y = labels.encode(raw[dc.label_column], where, dc.label_column)
    ids, scheme = _ids(raw, role, prefix, pd.Series(np.asarray(labels.names, dtype=object)[y], index=raw.index))
    return pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy(), "label": y, "order": np.arange(len(raw))}), scheme


def unlabeled_frame(raw: pd.DataFrame, where: str, dc: DataConfig) -> tuple[pd.DataFrame, str]:
    texts = check_texts(raw, where, dc.unlabeled_text_column, "data.unlabeled_text_column")
    ids, scheme = _ids(raw, "unsup", True, None)  # any label column (IMDB unsup: -1) is ignored
    return pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy(), "label": -1, "order": np.arange(len(raw))}), scheme


def clean(frame: pd.DataFrame, dc: DataConfig) -> tuple[pd.DataFrame, int]:
    """Cleaned copy; rows left empty by cleaning (a text that was only tags) are dropped and counted."""
    frame = frame.assign(text=clean_texts(frame["text"], dc.clean_html, dc.normalize_whitespace))
    empty = frame["text"].str.strip() == ""
    return frame[~empty], int(empty.sum())


def class_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, int]:
    counts = np.bincount(frame["label"].to_numpy(), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


# ---------------------------------------------------------------- the hooks

def read_test(dc: DataConfig, src: RawSource, want: list[str]) -> tuple[str, pd.DataFrame, dict] | None:
    """(where, raw rows, provenance) of data.test_source or the source's test split; None: neither."""
    if dc.test_source:
        tsrc = open_source(dc.test_source, dc.format, dc.dataset_config, want)
        where, raw = tsrc.split(dc.test_split or "test", "test")
        return where, raw, tsrc.provenance
    if "" not in src.splits and dc.test_split in src.splits:
        where, raw = src.split(dc.test_split, "test")
        return where, raw, {**src.provenance, "split": dc.test_split}
    return None


def read(dc: DataConfig) -> Inputs:
    """The labeled, test and unlabeled frames, cleaned; rows left empty by cleaning are counted."""
    want = [dc.text_column, dc.label_column, "id"]
    src = open_source(dc.source, dc.format, dc.dataset_config, want)
    train_where, raw_train = src.split(dc.train_split, "train")
    prefix = src.kind != "demo"  # demo ids are already bbc-news/<class>/<file>
    check_texts(raw_train, train_where, dc.text_column, "data.text_column")  # a missing column before its labels
    if dc.label_column not in raw_train.columns:
        raise DataError(f"{train_where}: column '{dc.label_column}' missing (set data.label_column; columns: {list(map(str, raw_train.columns))})")
    labels = label_space(dc, src, raw_train[dc.label_column], train_where)
    ids: dict[str, str] = {}
    frames: dict[str, pd.DataFrame] = {}
    frames["train"], ids["train"] = labeled_frame(raw_train, train_where, "train", prefix, dc, labels)
    sources = {"train": {**src.provenance, "split": dc.train_split if "" not in src.splits else None}}
    test = read_test(dc, src, want)
    if test is not None:
        test_where, raw_test, sources["test"] = test
        frames["test"], ids["test"] = labeled_frame(raw_test, test_where, "test", prefix, dc, labels)
    if dc.unlabeled_source:
        usrc = open_source(dc.unlabeled_source, dc.format, dc.dataset_config, [dc.unlabeled_text_column, "id"])
        u_where, raw_u = usrc.split(unlabeled_split(usrc), "unlabeled")
        frames["unlabeled"], ids["unlabeled"] = unlabeled_frame(raw_u, u_where, dc)
        sources["unlabeled"] = usrc.provenance
    emptied: dict[str, int] = {}
    for role in frames:
        frames[role], emptied[role] = clean(frames[role], dc)
    return Inputs(frames["train"], frames.get("test"), frames.get("unlabeled"), labels.names, labels.origin,
                  train_where, sources, {"emptied_by_cleaning": emptied}, {"ids": ids})


def hold_out_test(train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified, seeded test share of train (for sources without a test split)."""
    gen = rng(dc.seed, HOLDOUT)
    test_rows = []
    for k in range(len(got.names)):
        idx = np.flatnonzero(train["label"].to_numpy() == k)
        test_rows.append(gen.permutation(idx)[: int(round(dc.test_fraction * len(idx)))])
    is_test = np.zeros(len(train), dtype=bool)
    is_test[np.concatenate(test_rows)] = True
    return train[~is_test], train[is_test]


def split(train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per class: dev first, then N train, the rest to transfer. Dev stays fixed and train sets
    are nested as N grows (same seed), which keeps a sweep over N comparable."""
    gen = rng(dc.seed, SAMPLE)
    n, d = dc.labels_per_class, dc.dev_budget
    labels = train["label"].to_numpy()
    parts: dict[str, list[np.ndarray]] = {"train": [], "dev": [], "rest": []}
    for k, name in enumerate(got.names):
        idx = np.flatnonzero(labels == k)
        need = d + (n if n is not None else 1)
        if len(idx) < need:
            raise DataError(
                f"{got.where}: class '{name}' has {len(idx)} examples after cleaning and de-duplication, "
                f"fewer than data.labels_per_class + dev per class (data.dev_per_class) = {need}")
        perm = gen.permutation(idx)
        stop = len(perm) if n is None else d + n
        parts["dev"].append(perm[:d])
        parts["train"].append(perm[d:stop])
        parts["rest"].append(perm[stop:])
    take = {k: train.iloc[np.sort(np.concatenate(v))] for k, v in parts.items()}
    return take["train"], take["dev"], take["rest"]


def augment(labeled: pd.DataFrame, taken: set[str], dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame | None, dict]:
    """No augmentation for text classification (the transfer set is the unlabeled texts as read)."""
    return None, {}


def transfer(rest: pd.DataFrame, unlabeled: pd.DataFrame | None, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, int]:
    """The rest of train and the unlabeled rows, shuffled, then cut to data.max_transfer_rows."""
    pool = pd.concat([rest, unlabeled] if unlabeled is not None else [rest], ignore_index=True)
    rows = pool.iloc[rng(dc.seed, SHUFFLE).permutation(len(pool))]
    capped = 0
    if dc.max_transfer_rows is not None and len(rows) > dc.max_transfer_rows:
        capped = len(rows) - dc.max_transfer_rows
        rows = rows.iloc[: dc.max_transfer_rows]
    if not len(rows):
        raise DataError(f"{dc.source}: the transfer set is empty (lower data.labels_per_class or set data.unlabeled_source)")
    return rows, capped


def card_facts(frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> dict:
    return {
        "class_counts": {k: class_counts(frames[k], names) for k in ("train", "dev", "test")},
        "budgets": label_budgets(dc.labels_per_class, dc.dev_budget, dc.dev_per_class is not None,
                                 ("train_per_class", "dev_per_class"), ("labels_per_class", "dev_per_class")),
    }


def write_tables(out: Path, frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> None:
    for part in ("train", "dev", "test"):
        f = frames[part]
        table = data.labeled_table(f["id"].tolist(), f["text"].tolist(), f["label"].tolist(), names)
        data.write_table(table, out / f"{part}.parquet", dc.row_group_rows)
    t = frames["transfer"]
    meta = {"source": dc.source, "unlabeled_source": dc.unlabeled_source, "seed": dc.seed}
    data.write_table(data.transfer_table(t["id"].tolist(), t["text"].tolist(), meta), out / "transfer.parquet", dc.row_group_rows)


def summary(rows: dict[str, int], names: list[str]) -> str:
    return str(rows)


def extras(card: dict, names: list[str]) -> tuple[dict, dict]:
    return {}, {}
