"""The low-resource protocol's shared machinery, keyed on a column: text cleaning, exact
de-duplication, test-overlap removal, the seeded random streams and the final split checks.

Both tasks use it: sequence classification keys rows on their cleaned `text`, token
classification on a sentence key (its words lower-cased, whitespace removed). The task modules
keep what differs: how labels are read and how train is cut per class or per sentence.
"""

from __future__ import annotations

import html
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.lib.core.errors import DataError
from components.lib.settings.config import DataConfig

HTML_TAG = r"</?[A-Za-z][^<>]*>"  # <br />, <i>, </p>; not "a < b > c"
WHITESPACE = r"[\s\p{Z}]+"  # RE2: ASCII space classes + Unicode separators (nbsp from &nbsp;)
log = logging.getLogger("distilflow.prepare_data")  # prepare-data is where these run
# Independent random streams per purpose, so e.g. changing labels_per_class keeps the test hold-out.
HOLDOUT, SAMPLE, SHUFFLE = 1, 2, 3


def rng(seed: int, purpose: int, *sub: int) -> np.random.Generator:
    """The stream for (seed, purpose[, sub...]); e.g. sub = a language's index in data.languages."""
    return np.random.default_rng([seed, purpose, *sub])


def check_texts(raw: pd.DataFrame, where: str, column: str, key: str) -> pd.Series:
    """The raw text column, or a DataError naming the file, column and first bad row."""
    if column not in raw.columns:
        raise DataError(f"{where}: column '{column}' missing (set {key}; columns: {list(map(str, raw.columns))})")
    texts = raw[column]
    if texts.isna().any():
        raise DataError(f"{where}: column '{column}' has {int(texts.isna().sum())} null values (first at row {int(np.flatnonzero(texts.isna())[0])})")
    kind = pd.api.types.infer_dtype(texts, skipna=True)
    if len(texts) and kind != "string":
        raise DataError(f"{where}: column '{column}' holds {kind} values, expected text")
    empty = texts.str.strip() == ""
    if empty.any():
        raise DataError(f"{where}: column '{column}' has {int(empty.sum())} empty values (first at row {int(np.flatnonzero(empty)[0])})")
    return texts


def clean_texts(texts: pd.Series, clean_html: bool, normalize_whitespace: bool) -> pd.Series:
    """HTML tags -> space, entities unescaped, whitespace runs -> one space; vectorised in Arrow."""
    arr = pa.array(texts.to_numpy(), pa.string())
    if clean_html:
        arr = pc.replace_substring_regex(arr, HTML_TAG, " ")
        has_entity = pc.match_substring_regex(arr, r"&(#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);").to_numpy(zero_copy_only=False)
        if has_entity.any():  # only the few rows with an entity go through Python
            out = np.asarray(arr.to_pylist(), dtype=object)
            out[has_entity] = [html.unescape(t) for t in out[has_entity]]
            arr = pa.array(out, pa.string())
    if normalize_whitespace:
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, WHITESPACE, " "))
    return pd.Series(arr.to_numpy(zero_copy_only=False), index=texts.index, dtype=object)


def _hashable(values: pd.Series) -> pd.Series:
    """Per-word tag lists -> tuples, so they can be grouped; scalars unchanged."""
    return values.map(tuple) if len(values) and isinstance(values.iloc[0], list | tuple | np.ndarray) else values


def dedupe(frame: pd.DataFrame, key: str, target: str | None) -> tuple[pd.DataFrame, int, int]:
    """Keep the first row of each `key`; returns (frame, removed, keys whose duplicates carry
    different `target` values). target None: an unlabeled frame, no conflicts to count."""
    dup = frame[key].duplicated(keep="first")
    conflicts = 0
    if dup.any() and target is not None:
        repeated = frame[frame[key].isin(frame.loc[dup, key])]
        conflicts = int((_hashable(repeated[target]).groupby(repeated[key]).nunique() > 1).sum())
    return frame[~dup], int(dup.sum()), conflicts


def drop_overlap(frame: pd.DataFrame, test: pd.DataFrame, key: str, what: str, noun: str,
                 dc: DataConfig) -> tuple[pd.DataFrame, int]:
    """Rows of `frame` whose key is also in test: dropped and counted, or (on_overlap=fail) an error."""
    inside = frame[key].isin(test[key])
    n = int(inside.sum())
    if n and dc.on_overlap == "fail":
        raise DataError(f"{n} {what} {noun} are also in the test split (e.g. {frame.loc[inside, 'id'].iloc[0]}); "
                        "set data.on_overlap=drop to drop them")
    return frame[~inside], n


def verify(frames: dict[str, pd.DataFrame], key: str, count_duplicates: bool = False) -> dict[str, int]:
    """The guarantees the split makes, re-checked on the final tables (a failure is a bug here)."""
    test = set(frames["test"][key])
    seen = set(frames["train"][key]) | set(frames["dev"][key])
    checks = {
        "train_dev_in_test": len(seen & test),
        "transfer_in_test": int(frames["transfer"][key].isin(test).sum()),
        "transfer_in_train_dev": int(frames["transfer"][key].isin(seen).sum()),
    }
    if count_duplicates:
        checks["duplicate_sentences"] = int(sum(f[key].duplicated().sum() for f in frames.values()))
    checks["duplicate_ids"] = int(pd.concat([f["id"] for f in frames.values()]).duplicated().sum())
    if any(checks.values()):
        raise AssertionError(f"prepare-data produced overlapping splits: {checks}")
    return checks


def label_budgets(train: int | None, dev: int, explicit: bool, keys: tuple[str, str], fields: tuple[str, str]) -> dict:
    """The data card's label budgets as used: train and dev (under `keys`), whether dev was set, and
    whether it is above train, which is warned about, naming the config `fields` (train, dev)."""
    above = train is not None and dev > train
    if above:
        log.warning("data.%s %d > data.%s %d: dev is a larger label budget than train (it picks epochs and makes "
                    "export's decisions)", fields[1], dev, fields[0], train)
    return {keys[0]: train, keys[1]: dev, "dev_set_explicitly": explicit, "dev_above_train": above}
