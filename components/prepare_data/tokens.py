"""prepare-data hooks for token classification: whole sentences with a tag per word (PrepareHooks).

    train     data.train_sentences labeled sentences, sampled with data.seed
    dev       data.dev_sentences labeled sentences (default min(100, train_sentences)), also from the
              source's train part
    test      the official test data (data.test_source, or the dataset's test split), else a
              seeded data.test_fraction of the sentences
    transfer  the rest of train with its tags dropped + data.unlabeled_source (a tokens column,
              or raw text split into words by data.pretokenizer), shuffled, capped (train's rest first, unlabeled rows fill the remaining room)

With data.languages each language is read from its own sources and gets its own N train and M dev
sentences. Sources are read by lib/sources/token_ingest.py (CoNLL / IOB files, Hugging Face token
datasets, JSONL / Parquet list columns, the WNUT-16 demo). Tags may be names or indices. Tag names:
data.label_names, else the dataset's Sequence(ClassLabel) names, else the tags found, O first, then
by entity type with B- before I-.

Sentences are keyed by their lower-cased words with whitespace removed (so the same sentence
pre-tokenised another way still counts as a duplicate): the flow in components/prepare_data/__init__.py
de-duplicates them on that key within and across splits and keeps test sentences out of train, dev
and transfer. Tables: the token contracts of lib/contracts/token_data.py. Reached through
`python -m components.prepare_data --set task=token-classification ...`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data, token_data
from components.lib.core import tokens
from components.lib.core.errors import DataError, UserError
from components.lib.core.task import Task
from components.lib.settings.config import DataConfig
from components.lib.sources.augment import mention_replacement
from components.lib.sources.splits import HOLDOUT, SAMPLE, SHUFFLE, label_budgets, rng
from components.lib.sources.token_ingest import (
    RawSentences,
    language_config,
    load_labeled,
    load_languages,
    load_unlabeled,
)
from components.lib.sources.unlabeled_text import read_language_unlabeled
from components.prepare_data.hooks import SPLITS, Inputs
from components.prepare_data.token_facts import IOB_TAG, map_tags, read_facts

log = logging.getLogger("distilflow.prepare_data")

KEY, TARGET, NOUN, UNIT = "key", "tags", "sentences", "sentences"
CONFLICTS = "duplicate_sentences_with_conflicting_tags"
COUNT_DUPLICATES = True
TASK_FIELDS = {"task": Task.token_classification.value}
AUGMENT, UNLABELED = 7, 8  # sampling streams (lib/sources/splits.py rng purposes) of augmentation, per-language caps
PREFIX_ORDER = "BIESLU"  # B- before I- (then IOBES / BILOU ends) within an entity type


class PrepareTokensResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: str = Task.token_classification.value
    data_dir: str
    label_names: list[str]
    rows: dict[str, int]  # sentences per split
    words: dict[str, int]
    entities: dict[str, int]  # entity spans per labeled split
    duplicates_removed: int
    overlap_removed: int
    seconds: float
    run_id: str | None = None


Result = PrepareTokensResult


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
                if not IOB_TAG.match(tag):
                    raise DataError(f"{s.at(i, j)}: tag {tag!r} is outside the IOB scheme (O, or B-/I-/E-/S-/L-/U- and a type)")
            seen.update(raw)
    names = sorted(seen, key=tag_order)
    return TagSpace(names, {n: i for i, n in enumerate(names)}, f"the tags found in {labeled[0].where}")


# ---------------------------------------------------------------- sentences -> frames

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


def frames_of(raws: list[RawSentences], space: TagSpace) -> pd.DataFrame:
    """One frame over several sources (one per language), `order` counting across all of them."""
    frame = pd.concat([frame_of(r, space.encode(r)) for r in raws], ignore_index=True)
    return frame.assign(order=np.arange(len(frame)))


def read_labeled(dc: DataConfig) -> tuple[list[RawSentences], list[RawSentences], dict]:
    """Train and test sentences, one RawSentences per language (data.languages) or one in all,
    and their provenance for the card."""
    if dc.languages:
        per_lang = load_languages(dc)
        return ([t for _, t, _ in per_lang], [t for _, _, t in per_lang],
                {"train": {lang: t.provenance for lang, t, _ in per_lang}, "test": {lang: t.provenance for lang, _, t in per_lang}})
    raw_train, raw_test = load_labeled(dc)
    sources = {"train": raw_train.provenance}
    if raw_test is None:
        return [raw_train], [], sources
    return [raw_train], [raw_test], {**sources, "test": raw_test.provenance}


def low_resource_split(train: pd.DataFrame, dc: DataConfig, where: str,
                       gen: np.random.Generator | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Dev first, then N train sentences, the rest to transfer: dev stays fixed and train sets are
    nested as N grows (same seed). `gen`: the sampling stream (one per language)."""
    n, d = dc.train_sentences, dc.dev_sentence_budget
    need = d + (n if n is not None else 1)
    if len(train) < need:
        raise UserError(f"{where}: {len(train)} sentences left after de-duplication and taking out the test sentences, fewer than "
                        f"data.train_sentences + dev sentences (data.dev_sentences) = {need} (lower them)")
    perm = (gen or rng(dc.seed, SAMPLE)).permutation(len(train))
    stop = len(perm) if n is None else d + n
    return (train.iloc[np.sort(perm[d:stop])], train.iloc[np.sort(perm[:d])], train.iloc[np.sort(perm[stop:])])


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


def has_lang(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and bool(frame["lang"].notna().all())


# ---------------------------------------------------------------- the hooks

def read(dc: DataConfig) -> Inputs:
    """Train and test sentences (their tags encoded) and the unlabeled sentences, as frames."""
    raw_trains, raw_tests, sources = read_labeled(dc)
    facts: dict = {"read": read_facts(raw_trains, raw_tests, bool(dc.languages))}
    if dc.languages:
        facts["reader"] = {ls.lang: t.provenance["reader"] for ls, t in zip(dc.languages, raw_trains, strict=True)}
    if dc.label_map:
        facts["label_map"] = {"map": dict(dc.label_map),
                              "tags_mapped": map_tags(raw_trains + raw_tests, dc.label_map, dc.label_names)}
    space = tag_space(dc, raw_trains + raw_tests)
    train = frames_of(raw_trains, space)
    test = frames_of(raw_tests, space) if raw_tests else None
    pools = []
    if dc.unlabeled_source:
        raw_u = load_unlabeled(dc)
        sources["unlabeled"] = raw_u.provenance
        pools.append(frame_of(raw_u, None))
    for ls in dc.languages or []:
        if ls.unlabeled:
            frame, prov = read_language_unlabeled(ls, language_config(dc, ls))
            sources.setdefault("unlabeled_per_language", {})[ls.lang] = prov
            pools.append(frame.assign(tags=None, key=[sentence_key(w) for w in frame["tokens"]]))
    unlabeled = None
    if pools:
        unlabeled = pd.concat(pools, ignore_index=True)
        unlabeled = unlabeled.assign(order=np.arange(len(unlabeled)))
    return Inputs(train, test, unlabeled, space.names, space.origin, ", ".join(r.where for r in raw_trains),
                  sources, {}, facts)


def hold_out_test(train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded test_fraction of the sentences (for sources without a test split)."""
    n_test = int(round(dc.test_fraction * len(train)))
    if n_test < 1 or n_test >= len(train):
        raise DataError(f"{got.where}: {len(train)} sentences are too few to hold out a test share of {dc.test_fraction} (set data.test_source)")
    is_test = np.zeros(len(train), dtype=bool)
    is_test[rng(dc.seed, HOLDOUT).permutation(len(train))[:n_test]] = True
    return train[~is_test], train[is_test]


def split(train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The low-resource split: over all sentences, or per language with data.languages (each
    language its own N train and M dev sentences and its own sampling stream)."""
    if not dc.languages:
        return low_resource_split(train, dc, got.where)
    parts = [low_resource_split(train[train["lang"] == ls.lang], dc, f"{got.where} (language '{ls.lang}')", rng(dc.seed, SAMPLE, k))
             for k, ls in enumerate(dc.languages)]
    return tuple(pd.concat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def per_language_caps(unlabeled: pd.DataFrame, dc: DataConfig) -> tuple[pd.DataFrame, int]:
    """Each language's own unlabeled sentences cut to its unlabeled_fraction, then its
    max_unlabeled_rows (seeded samples, source order kept); rows of data.unlabeled_source pass."""
    keep = np.ones(len(unlabeled), dtype=bool)
    for k, ls in enumerate(dc.languages or []):
        mine = np.flatnonzero(unlabeled["id"].str.startswith(f"{ls.lang}/unsup/").to_numpy())
        n = len(mine) if ls.unlabeled_fraction >= 1 else int(round(ls.unlabeled_fraction * len(mine)))
        n = n if ls.max_unlabeled_rows is None else min(n, ls.max_unlabeled_rows)
        if n < len(mine):
            drop = rng(dc.seed, UNLABELED, k).permutation(len(mine))[n:]
            keep[mine[drop]] = False
    return unlabeled[keep], int((~keep).sum())


def transfer(rest: pd.DataFrame, unlabeled: pd.DataFrame | None, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, int]:
    """The rest of train (tags dropped) and the unlabeled sentences, capped, then shuffled."""
    rest = rest.assign(tags=None)
    capped = 0
    if unlabeled is not None and dc.languages:
        unlabeled, capped = per_language_caps(unlabeled, dc)
    # The cap keeps the in-domain rest of train first and fills up with (a seeded sample of) the
    # unlabeled source, so a large generic pool never crowds out the source's own sentences.
    if dc.max_transfer_rows is not None and len(rest) > dc.max_transfer_rows:
        capped += len(rest) - dc.max_transfer_rows
        rest = rest.iloc[np.sort(rng(dc.seed, SHUFFLE).permutation(len(rest))[: dc.max_transfer_rows])]
    if unlabeled is not None and dc.max_transfer_rows is not None:
        room = dc.max_transfer_rows - len(rest)
        if len(unlabeled) > room:
            capped += len(unlabeled) - room
            unlabeled = unlabeled.iloc[np.sort(rng(dc.seed, SHUFFLE + 10).permutation(len(unlabeled))[:room])]
    pool = pd.concat([rest, unlabeled] if unlabeled is not None else [rest], ignore_index=True)
    rows = pool.iloc[rng(dc.seed, SHUFFLE).permutation(len(pool))]
    if not len(rows):
        raise DataError(f"{got.where}: the transfer set is empty (lower data.train_sentences or set data.unlabeled_source)")
    return rows, capped


def augment(labeled: pd.DataFrame, taken: set[str], dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame | None, dict]:
    """Mention-replacement copies of each language's train sentences (its augment_copies), to go
    to the transfer set untagged; ids `<lang>/aug/<source id>/<copy>`. Keys in `taken` are skipped."""
    frames, facts = [], {}
    for k, ls in enumerate(dc.languages or []):
        if not ls.augment_copies:
            continue
        mine = labeled[labeled["lang"] == ls.lang]
        tags = [[got.names[t] for t in row] for row in mine["tags"]]
        made, counts = mention_replacement(mine["tokens"].tolist(), tags, ls.augment_copies, rng(dc.seed, AUGMENT, k),
                                           sentence_key, taken)
        src = mine["id"].tolist()
        ids = [f"{ls.lang}/aug/{src[c.source]}/{c.copy}" for c in made]
        frames.append(pd.DataFrame({"id": ids, "tokens": [c.words for c in made], "tags": [None] * len(made),
                                    "lang": [ls.lang] * len(made), "key": [sentence_key(c.words) for c in made]}))
        facts[ls.lang] = {"method": "mention_replacement", "copies": ls.augment_copies, "from": "train", **counts}
    if not frames:
        return None, facts
    out = pd.concat(frames, ignore_index=True)
    return out.assign(order=np.arange(len(out))), facts


def card_facts(frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> dict:
    if has_lang(frames["train"]) and not has_lang(frames["transfer"]):
        log.warning("%s has no '%s' column: the transfer set is written without languages", dc.unlabeled_source, dc.lang_column)
    return {
        "words": {k: int(v["tokens"].map(len).sum()) for k, v in frames.items()},
        "tag_counts": {k: tag_counts(frames[k], names) for k in ("train", "dev", "test")},
        "entity_counts": {k: entity_counts(frames[k], names) for k in ("train", "dev", "test")},
        "languages": {k: {str(a): int(b) for a, b in sorted(v["lang"].value_counts().items())}
                      for k, v in frames.items() if has_lang(v)},
        "budgets": {**label_budgets(dc.train_sentences, dc.dev_sentence_budget, dc.dev_sentences is not None,
                                    ("train_sentences", "dev_sentences"), ("train_sentences", "dev_sentences")),
                    "per_language": bool(dc.languages)},
    }


def write_tables(out: Path, frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> None:
    for part in SPLITS:
        f = frames[part]
        langs = f["lang"].tolist() if has_lang(f) else None
        if part == "transfer":
            meta = {"source": dc.source, "unlabeled_source": dc.unlabeled_source, "seed": dc.seed}
            if dc.languages:  # data.source is not read then: name the languages' sources instead
                meta["source"] = {ls.lang: ls.source for ls in dc.languages}
            table = token_data.token_transfer_table(f["id"].tolist(), f["tokens"].tolist(), langs, meta)
        else:
            table = token_data.token_labeled_table(f["id"].tolist(), f["tokens"].tolist(), f["tags"].tolist(), names, langs)
        data.write_table(table, out / f"{part}.parquet", dc.row_group_rows)


def summary(rows: dict[str, int], names: list[str]) -> str:
    return f"{rows} sentences, {len(names)} tags"


def extras(card: dict, names: list[str]) -> tuple[dict, dict]:
    """Words and entity spans per split in the result; as metrics too, with the number of tags."""
    words = card["words"]
    entities = {k: sum(v.values()) for k, v in card["entity_counts"].items()}
    metrics = {**{f"words_{k}": v for k, v in words.items()}, **{f"entities_{k}": v for k, v in entities.items()},
               "num_tags": len(names)}
    return {"words": words, "entities": entities}, metrics
