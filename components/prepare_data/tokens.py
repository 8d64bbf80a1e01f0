"""prepare-data for token classification: whole sentences, the same low-resource protocol.

    train     data.train_sentences labeled sentences, sampled with data.seed
    dev       data.dev_sentences labeled sentences (default min(100, train_sentences)), also from the
              source's train part
    test      the official test data (data.test_source, or the dataset's test split), else a
              seeded data.test_fraction of the sentences
    transfer  the rest of train with its tags dropped + data.unlabeled_source (a tokens column,
              or raw text split into words by data.pretokenizer), shuffled, capped (train's rest first, unlabeled rows fill the remaining room)

Sources are read by lib/sources/token_ingest.py (CoNLL / IOB files, Hugging Face token datasets, JSONL /
Parquet list columns, the WNUT-16 demo). Tags may be names or indices. Tag names: data.label_names, else the dataset's Sequence(ClassLabel)
names, else the tags found, O first, then by entity type with B- before I-.

Sentences are de-duplicated by their lower-cased words with whitespace removed (so the same
sentence pre-tokenised another way still counts as a duplicate), within and across splits; no
train, dev or transfer sentence is also in test. Output: <data_dir>/{train,dev,test,transfer}.parquet
(the token contracts of lib/contracts/token_data.py) + data_card.json, written atomically. Reached through
`python -m components.prepare_data --set task=token-classification ...`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data, token_data
from components.lib.core import tokens
from components.lib.core.errors import DataError, UserError
from components.lib.core.task import Task
from components.lib.settings.config import DataConfig, PipelineConfig
from components.lib.sources.splits import (
    HOLDOUT,
    SAMPLE,
    SHUFFLE,
    dedupe,
    drop_overlap,
    label_budgets,
    rng,
    verify,
)
from components.lib.sources.token_ingest import RawSentences, load_labeled, load_languages, load_unlabeled
from components.lib.tracking import runs as tracking

log = logging.getLogger("distilflow.prepare_data")

SPLITS = ("train", "dev", "test", "transfer")
PREFIX_ORDER = "BIESLU"  # B- before I- (then IOBES / BILOU ends) within an entity type
IOB_TAG = re.compile(r"^(O|[BIESLU][-_]\S+)$")  # IOB1/IOB2, IOBES and BILOU tags


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


def hold_out_test(train: pd.DataFrame, dc: DataConfig, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded test_fraction of the sentences (for sources without a test split)."""
    n_test = int(round(dc.test_fraction * len(train)))
    if n_test < 1 or n_test >= len(train):
        raise DataError(f"{where}: {len(train)} sentences are too few to hold out a test share of {dc.test_fraction} (set data.test_source)")
    is_test = np.zeros(len(train), dtype=bool)
    is_test[rng(dc.seed, HOLDOUT).permutation(len(train))[:n_test]] = True
    return train[~is_test], train[is_test]


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


def _has_lang(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and bool(frame["lang"].notna().all())


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


def split(train: pd.DataFrame, dc: DataConfig, where: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The low-resource split: over all sentences, or per language with data.languages (each
    language its own N train and M dev sentences and its own sampling stream)."""
    if not dc.languages:
        return low_resource_split(train, dc, where)
    parts = [low_resource_split(train[train["lang"] == ls.lang], dc, f"{where} (language '{ls.lang}')", rng(dc.seed, SAMPLE, k))
             for k, ls in enumerate(dc.languages)]
    return tuple(pd.concat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def build(dc: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """Read, check, dedupe and split. Returns the four frames, tag names and the data-card facts."""
    raw_trains, raw_tests, sources = read_labeled(dc)
    space = tag_space(dc, raw_trains + raw_tests)
    where = ", ".join(r.where for r in raw_trains)
    removed: dict[str, dict[str, int]] = {"duplicates": {}, "overlap_with_test": {}}
    conflicts: dict[str, int] = {}
    train, removed["duplicates"]["train"], conflicts["train"] = dedupe(frames_of(raw_trains, space), "key", "tags")
    if not raw_tests:
        train, test = hold_out_test(train, dc, where)
        sources["test"] = {"held_out_from": "train", "fraction": dc.test_fraction, "seed": dc.seed}
    else:
        test, removed["duplicates"]["test"], conflicts["test"] = dedupe(frames_of(raw_tests, space), "key", "tags")
        # across languages too: no train (or, below, transfer) sentence equals a test sentence of any language
        train, removed["overlap_with_test"]["train"] = drop_overlap(train, test, "key", "train", "sentences", dc)

    unlabeled = None
    if dc.unlabeled_source:
        raw_u = load_unlabeled(dc)
        sources["unlabeled"] = raw_u.provenance
        unlabeled, removed["duplicates"]["unlabeled"], _ = dedupe(frame_of(raw_u, None), "key", None)
        unlabeled, removed["overlap_with_test"]["unlabeled"] = drop_overlap(unlabeled, test, "key", "unlabeled", "sentences", dc)
        in_train = unlabeled["key"].isin(train["key"])  # would repeat a train/dev sentence in transfer
        unlabeled, removed["duplicates"]["unlabeled_in_train"] = unlabeled[~in_train], int(in_train.sum())

    labeled, dev, rest = split(train, dc, where)
    rest = rest.assign(tags=None)
    # The cap keeps the in-domain rest of train first and fills up with (a seeded sample of) the
    # unlabeled source, so a large generic pool never crowds out the source's own sentences.
    capped = 0
    if dc.max_transfer_rows is not None and len(rest) > dc.max_transfer_rows:
        capped += len(rest) - dc.max_transfer_rows
        rest = rest.iloc[np.sort(rng(dc.seed, SHUFFLE).permutation(len(rest))[: dc.max_transfer_rows])]
    if unlabeled is not None and dc.max_transfer_rows is not None:
        room = dc.max_transfer_rows - len(rest)
        if len(unlabeled) > room:
            capped += len(unlabeled) - room
            unlabeled = unlabeled.iloc[np.sort(rng(dc.seed, SHUFFLE + 10).permutation(len(unlabeled))[:room])]
    pool = pd.concat([rest, unlabeled] if unlabeled is not None else [rest], ignore_index=True)
    transfer = pool.iloc[rng(dc.seed, SHUFFLE).permutation(len(pool))]
    if not len(transfer):
        raise DataError(f"{where}: the transfer set is empty (lower data.train_sentences or set data.unlabeled_source)")
    frames = {"train": labeled, "dev": dev, "test": test.sort_values("order", kind="stable"), "transfer": transfer}
    if _has_lang(labeled) and not _has_lang(transfer):
        log.warning("%s has no '%s' column: the transfer set is written without languages", dc.unlabeled_source, dc.lang_column)
    n_from_train = int(transfer["id"].isin(rest["id"]).sum())
    card = {
        "task": Task.token_classification.value,
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
        "checks": verify(frames, "key", count_duplicates=True),
        "seed": dc.seed,
        "budgets": {**label_budgets(dc.train_sentences, dc.dev_sentence_budget, dc.dev_sentences is not None,
                                    ("train_sentences", "dev_sentences"), ("train_sentences", "dev_sentences")),
                    "per_language": bool(dc.languages)},
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
            if dc.languages:  # data.source is not read then: name the languages' sources instead
                meta["source"] = {ls.lang: ls.source for ls in dc.languages}
            table = token_data.token_transfer_table(f["id"].tolist(), f["tokens"].tolist(), langs, meta)
        else:
            table = token_data.token_labeled_table(f["id"].tolist(), f["tokens"].tolist(), f["tags"].tolist(), names, langs)
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
