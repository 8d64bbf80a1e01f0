"""prepare-data for sequence classification: ingest a source, clean, de-duplicate, and make the low-resource split.

    train     N labeled examples per class (data.labels_per_class), sampled with data.seed
    dev       data.dev_per_class labeled examples per class (default min(10, labels_per_class): never
              more dev than train unless set), also from the source's train split
    test      the official test split (test_source / test_split) or a stratified held-out share
    transfer  the rest of train with labels dropped + the unlabeled source, shuffled, capped

Exact duplicates (after cleaning) are removed within and across splits; no train, dev or
transfer text is also in test (dropped and counted, or an error with on_overlap=fail). Output:
<data_dir>/{train,dev,test,transfer}.parquet + data_card.json, written atomically.

    python -m components.prepare_data --config configs/imdb.yaml --set data.labels_per_class=50

Cleaning, de-duplication, overlap removal and the split checks are lib/sources/splits.py's (shared with
token classification, prepare_data/tokens.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import DataConfig, PipelineConfig
from components.lib.sources.ingest import RawSource, open_source, unlabeled_split
from components.lib.sources.splits import (
    HOLDOUT,
    SAMPLE,
    SHUFFLE,
    check_texts,
    clean_texts,
    dedupe,
    drop_overlap,
    label_budgets,
    rng,
    verify,
)
from components.lib.tracking import runs as tracking

log = logging.getLogger("distilflow.prepare_data")

SPLITS = ("train", "dev", "test", "transfer")


class PrepareResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: str
    label_names: list[str]
    rows: dict[str, int]
    duplicates_removed: int
    overlap_removed: int
    seconds: float
    run_id: str | None = None


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


def label_space(dc: DataConfig, source: RawSource, raw_train: pd.Series) -> LabelSpace:
    """Names from data.label_map / data.label_names, a ClassLabel feature, or the sorted raw values."""
    if dc.label_map:
        names = list(dc.label_names or dict.fromkeys(dc.label_map.values()))
        for raw_value, name in dc.label_map.items():
            if name not in names:
                raise UserError(f"config key 'data.label_map': '{raw_value}' maps to '{name}', not in data.label_names {names}")
        return LabelSpace(names, {k: names.index(v) for k, v in dc.label_map.items()}, False, "data.label_map")
    given = dc.label_names or source.class_names.get(dc.label_column)
    if given:
        if len(set(given)) != len(given):
            raise UserError(f"config key 'data.label_names': duplicate names in {given}")
        origin = "data.label_names" if dc.label_names else f"{source.where} class names"
        return LabelSpace(list(given), {n: i for i, n in enumerate(given)}, True, origin)
    values = sorted(raw_train.dropna().unique().tolist())
    names = [str(v) for v in values]
    return LabelSpace(names, {n: i for i, n in enumerate(names)}, False, f"the values found in {source.where}")


# ---------------------------------------------------------------- raw -> checked frames

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
    y = labels.encode(raw[dc.label_column], where, dc.label_column)
    ids, scheme = _ids(raw, role, prefix, pd.Series(np.asarray(labels.names, dtype=object)[y], index=raw.index))
    return pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy(), "label": y, "order": np.arange(len(raw))}), scheme


def unlabeled_frame(raw: pd.DataFrame, where: str, dc: DataConfig) -> tuple[pd.DataFrame, str]:
    texts = check_texts(raw, where, dc.unlabeled_text_column, "data.unlabeled_text_column")
    ids, scheme = _ids(raw, "unsup", True, None)  # any label column (IMDB unsup: -1) is ignored
    return pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy(), "label": -1, "order": np.arange(len(raw))}), scheme


# ---------------------------------------------------------------- cleaning and de-duplication

def clean(frame: pd.DataFrame, dc: DataConfig) -> tuple[pd.DataFrame, int]:
    """Cleaned copy; rows left empty by cleaning (a text that was only tags) are dropped and counted."""
    frame = frame.assign(text=clean_texts(frame["text"], dc.clean_html, dc.normalize_whitespace))
    empty = frame["text"].str.strip() == ""
    return frame[~empty], int(empty.sum())


# ---------------------------------------------------------------- sampling

def hold_out_test(train: pd.DataFrame, dc: DataConfig, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified, seeded test share of train (for sources without a test split)."""
    gen = rng(dc.seed, HOLDOUT)
    test_rows = []
    for k in range(len(names)):
        idx = np.flatnonzero(train["label"].to_numpy() == k)
        test_rows.append(gen.permutation(idx)[: int(round(dc.test_fraction * len(idx)))])
    is_test = np.zeros(len(train), dtype=bool)
    is_test[np.concatenate(test_rows)] = True
    return train[~is_test], train[is_test]


def low_resource_split(train: pd.DataFrame, dc: DataConfig, names: list[str], where: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per class: dev first, then N train, the rest to transfer. Dev stays fixed and train sets
    are nested as N grows (same seed), which keeps a sweep over N comparable."""
    gen = rng(dc.seed, SAMPLE)
    n, d = dc.labels_per_class, dc.dev_budget
    labels = train["label"].to_numpy()
    parts: dict[str, list[np.ndarray]] = {"train": [], "dev": [], "rest": []}
    for k, name in enumerate(names):
        idx = np.flatnonzero(labels == k)
        need = d + (n if n is not None else 1)
        if len(idx) < need:
            raise DataError(
                f"{where}: class '{name}' has {len(idx)} examples after cleaning and de-duplication, "
                f"fewer than data.labels_per_class + dev per class (data.dev_per_class) = {need}")
        perm = gen.permutation(idx)
        stop = len(perm) if n is None else d + n
        parts["dev"].append(perm[:d])
        parts["train"].append(perm[d:stop])
        parts["rest"].append(perm[stop:])
    take = {k: train.iloc[np.sort(np.concatenate(v))] for k, v in parts.items()}
    return take["train"], take["dev"], take["rest"]


def class_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, int]:
    counts = np.bincount(frame["label"].to_numpy(), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


# ---------------------------------------------------------------- the step

def build(dc: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """Read, check, clean, dedupe and split. Returns the four frames, label names, data-card facts."""
    want = [dc.text_column, dc.label_column, "id"]
    src = open_source(dc.source, dc.format, dc.dataset_config, want)
    train_where, raw_train = src.split(dc.train_split, "train")
    prefix = src.kind != "demo"  # demo ids are already bbc-news/<class>/<file>
    if dc.label_column not in raw_train.columns:
        raise DataError(f"{train_where}: column '{dc.label_column}' missing (set data.label_column; columns: {list(map(str, raw_train.columns))})")
    labels = label_space(dc, src, raw_train[dc.label_column])
    id_schemes: dict[str, str] = {}
    train, id_schemes["train"] = labeled_frame(raw_train, train_where, "train", prefix, dc, labels)
    sources = {"train": {**src.provenance, "split": dc.train_split if "" not in src.splits else None}}

    test = None
    if dc.test_source:
        tsrc = open_source(dc.test_source, dc.format, dc.dataset_config, want)
        test_where, raw_test = tsrc.split(dc.test_split or "test", "test")
        sources["test"] = tsrc.provenance
    elif "" not in src.splits and dc.test_split in src.splits:
        test_where, raw_test = src.split(dc.test_split, "test")
        sources["test"] = {**src.provenance, "split": dc.test_split}
    if "test" in sources:
        test, id_schemes["test"] = labeled_frame(raw_test, test_where, "test", prefix, dc, labels)

    unlabeled = None
    if dc.unlabeled_source:
        usrc = open_source(dc.unlabeled_source, dc.format, dc.dataset_config, [dc.unlabeled_text_column, "id"])
        u_where, raw_u = usrc.split(unlabeled_split(usrc), "unlabeled")
        unlabeled, id_schemes["unlabeled"] = unlabeled_frame(raw_u, u_where, dc)
        sources["unlabeled"] = usrc.provenance

    removed: dict[str, dict[str, int]] = {"emptied_by_cleaning": {}, "duplicates": {}, "overlap_with_test": {}}
    conflicts = {}
    train, removed["emptied_by_cleaning"]["train"] = clean(train, dc)
    train, removed["duplicates"]["train"], conflicts["train"] = dedupe(train, "text", "label")
    if test is None:
        train, test = hold_out_test(train, dc, labels.names)
        sources["test"] = {"held_out_from": "train", "fraction": dc.test_fraction, "seed": dc.seed}
    else:
        test, removed["emptied_by_cleaning"]["test"] = clean(test, dc)
        test, removed["duplicates"]["test"], conflicts["test"] = dedupe(test, "text", "label")
        train, removed["overlap_with_test"]["train"] = drop_overlap(train, test, "text", "train", "texts", dc)
    if unlabeled is not None:
        unlabeled, removed["emptied_by_cleaning"]["unlabeled"] = clean(unlabeled, dc)
        unlabeled, removed["duplicates"]["unlabeled"], _ = dedupe(unlabeled, "text", None)
        unlabeled, removed["overlap_with_test"]["unlabeled"] = drop_overlap(unlabeled, test, "text", "unlabeled", "texts", dc)
        in_train = unlabeled["text"].isin(train["text"])  # would repeat a train/dev text in transfer
        unlabeled, removed["duplicates"]["unlabeled_in_train"] = unlabeled[~in_train], int(in_train.sum())

    labeled, dev, rest = low_resource_split(train, dc, labels.names, train_where)
    pool = pd.concat([rest, unlabeled] if unlabeled is not None else [rest], ignore_index=True)
    transfer = pool.iloc[rng(dc.seed, SHUFFLE).permutation(len(pool))]
    capped = 0
    if dc.max_transfer_rows is not None and len(transfer) > dc.max_transfer_rows:
        capped = len(transfer) - dc.max_transfer_rows
        transfer = transfer.iloc[: dc.max_transfer_rows]
    if not len(transfer):
        raise DataError(f"{dc.source}: the transfer set is empty (lower data.labels_per_class or set data.unlabeled_source)")
    frames = {"train": labeled, "dev": dev, "test": test.sort_values("order", kind="stable"), "transfer": transfer}
    checks = verify(frames, "text")
    card = {
        "label_names": labels.names,
        "label_origin": labels.origin,
        "rows": {k: len(v) for k, v in frames.items()},
        "class_counts": {k: class_counts(frames[k], labels.names) for k in ("train", "dev", "test")},
        "transfer": {"from_train": int((transfer["label"] >= 0).sum()), "from_unlabeled": int((transfer["label"] < 0).sum()),
                     "capped": capped},
        "sources": sources,
        "ids": id_schemes,
        "removed": removed,
        "duplicate_texts_with_conflicting_labels": conflicts,
        "checks": checks,
        "seed": dc.seed,
        "budgets": label_budgets(dc.labels_per_class, dc.dev_budget, dc.dev_per_class is not None,
                                 ("train_per_class", "dev_per_class"), ("labels_per_class", "dev_per_class")),
        "config": dc.model_dump(mode="json"),
    }
    return frames, labels.names, card


def write(out: Path, frames: dict[str, pd.DataFrame], names: list[str], card: dict, dc: DataConfig) -> None:
    """All four tables and the card into `out` (the caller's temp dir)."""
    for split in ("train", "dev", "test"):
        f = frames[split]
        table = data.labeled_table(f["id"].tolist(), f["text"].tolist(), f["label"].tolist(), names)
        data.write_table(table, out / f"{split}.parquet", dc.row_group_rows)
    t = frames["transfer"]
    meta = {"source": dc.source, "unlabeled_source": dc.unlabeled_source, "seed": dc.seed}
    data.write_table(data.transfer_table(t["id"].tolist(), t["text"].tolist(), meta), out / "transfer.parquet", dc.row_group_rows)
    card["files"] = {f"{s}.parquet": data.sha256_file(out / f"{s}.parquet") for s in SPLITS}
    data.write_json(out / "data_card.json", card)


def run(cfg: PipelineConfig) -> PrepareResult:
    t0 = time.perf_counter()
    dc = cfg.data
    with tracking.step_run(cfg, "prepare-data") as tr:
        tr.log_params({"data": dc.model_dump(mode="json")})
        frames, names, card = build(dc)
        with data.atomic_dir(cfg.data_dir) as tmp:
            write(tmp, frames, names, card, dc)
        seconds = time.perf_counter() - t0
        rows = card["rows"]
        dups = sum(card["removed"]["duplicates"].values())
        overlap = sum(card["removed"]["overlap_with_test"].values())
        tr.log_metrics({**{f"rows_{k}": v for k, v in rows.items()}, "duplicates_removed": dups,
                        "overlap_removed": overlap, "seconds": seconds})
        tr.log_artifact(cfg.data_dir / "data_card.json", "data")
        total = sum(rows.values())
        log.info("prepared %s: %s; %d duplicates and %d test overlaps removed; %.1fs (%.0f rows/s)",
                 cfg.data_dir, rows, dups, overlap, seconds, total / max(seconds, 1e-9))
        return PrepareResult(data_dir=str(cfg.data_dir), label_names=names, rows=rows, duplicates_removed=dups,
                             overlap_removed=overlap, seconds=round(seconds, 3), run_id=tr.run_id)

