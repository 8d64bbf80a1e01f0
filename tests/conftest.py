"""Shared fixtures: a tiny BERT built from a config (with the real packaged tokenizer) and a
small synthetic topic task, so unit tests train real models in seconds on CPU."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = {
    "sport": "match goal team coach league striker season win stadium player referee cup".split(),
    "tech": "software chip computer network phone internet data code laptop robot server app".split(),
    "money": "bank market shares profit investor price economy budget tax trade loan stocks".split(),
}
FILLER = "the a of and to in on with for by at from this that it was is".split()


def make_topic_texts(n_per_class: int, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Sentences mixing topic words and filler; the topic is the label. Every text is unique."""
    rng = random.Random(seed)
    names = list(TOPICS)
    texts, labels = [], []
    for label, name in enumerate(names):
        for i in range(n_per_class):
            words = rng.choices(TOPICS[name], k=4) + rng.choices(FILLER, k=6)
            rng.shuffle(words)
            texts.append(" ".join(words) + f" item{seed}x{label}x{i}")
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order], names


@pytest.fixture(scope="session")
def packaged_teacher_dir() -> Path:
    from components.lib.assets import packaged_teacher_dir

    return packaged_teacher_dir()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    """A 2-layer, 32-wide BertModel with the real MiniLM WordPiece tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(packaged_teacher_dir)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def copy_dir(tmp_path):
    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


def write_tiny_task(out: Path, train: int = 8, dev: int = 8, test: int = 20, transfer: int = 80, seed: int = 0) -> Path:
    """train/dev/test/transfer Parquet of the synthetic topic task, per the data contracts."""
    from components.lib import data

    texts, labels, names = make_topic_texts(train + dev + test + transfer, seed=seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    splits: dict[str, list[int]] = {"train": [], "dev": [], "test": [], "transfer": []}
    for idx in by_class.values():
        cuts = [train, train + dev, train + dev + test]
        splits["train"] += idx[: cuts[0]]
        splits["dev"] += idx[cuts[0] : cuts[1]]
        splits["test"] += idx[cuts[1] : cuts[2]]
        splits["transfer"] += idx[cuts[2] :]
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = sorted(splits[split])
        table = data.labeled_table([f"{split}-{i}" for i in rows], [texts[i] for i in rows], [labels[i] for i in rows], names)
        data.write_table(table, out / f"{split}.parquet", row_group_rows=64)
    rows = sorted(splits["transfer"])
    data.write_table(data.transfer_table([f"transfer-{i}" for i in rows], [texts[i] for i in rows]), out / "transfer.parquet", row_group_rows=64)
    return out


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory) -> Path:
    """A prepared data dir (what prepare-data writes) for the 3-class synthetic topic task."""
    return write_tiny_task(tmp_path_factory.mktemp("tiny-task"))


# ---------------------------------------------------------------- token classification

NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
_PEOPLE = [["alice"], ["bob", "smith"], ["carol", "jones"], ["dave"], ["erin", "lee"], ["frank"]]
_PLACES = [["paris"], ["new", "york"], ["berlin"], ["cape", "town"], ["tokyo"], ["lima"]]
_ORGS = [["acme", "corp"], ["globex"], ["initech"], ["umbrella", "group"], ["hooli"]]
_FRAMES = [
    ["{PER}", "flew", "to", "{LOC}", "for", "{ORG}"],
    ["{ORG}", "hired", "{PER}", "in", "{LOC}"],
    ["yesterday", "{PER}", "met", "{PER}", "near", "{LOC}"],
    ["the", "office", "of", "{ORG}", "is", "in", "{LOC}"],
    ["{PER}", "said", "that", "{ORG}", "will", "grow"],
]


def make_ner_sentences(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[int]], list[str]]:
    """Template sentences with person/place/organisation names and IOB2 tags; every sentence is
    unique (a numbered filler word ends it)."""
    rng = random.Random(seed)
    pools = {"PER": _PEOPLE, "LOC": _PLACES, "ORG": _ORGS}
    sentences, tags = [], []
    for i in range(n):
        words: list[str] = []
        labels: list[int] = []
        for slot in rng.choice(_FRAMES):
            if slot.startswith("{"):
                typ = slot[1:-1]
                name = rng.choice(pools[typ])
                words += name
                labels += [NER_TAGS.index(f"B-{typ}")] + [NER_TAGS.index(f"I-{typ}")] * (len(name) - 1)
            else:
                words.append(slot)
                labels.append(0)
        words.append(f"ref{seed}x{i}")
        labels.append(0)
        sentences.append(words)
        tags.append(labels)
    return sentences, tags, list(NER_TAGS)


def write_tiny_ner_task(out: Path, train: int = 24, dev: int = 12, test: int = 30, transfer: int = 120,
                        seed: int = 0, langs: bool = False) -> Path:
    """train/dev/test/transfer Parquet of a synthetic NER task, per the token contracts."""
    from components.lib import data

    sents, tags, names = make_ner_sentences(train + dev + test + transfer, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    cuts = {"train": (0, train), "dev": (train, train + dev), "test": (train + dev, train + dev + test)}
    for split, (lo, hi) in cuts.items():
        lang = [("en" if i % 2 else "xx") for i in range(lo, hi)] if langs else None
        table = data.token_labeled_table([f"{split}-{i}" for i in range(lo, hi)], sents[lo:hi], tags[lo:hi], names, lang)
        data.write_table(table, out / f"{split}.parquet", row_group_rows=64)
    lo = train + dev + test
    table = data.token_transfer_table([f"transfer-{i}" for i in range(lo, len(sents))], sents[lo:])
    data.write_table(table, out / "transfer.parquet", row_group_rows=64)
    return out


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory) -> Path:
    """A prepared data dir for the synthetic NER task (what prepare-data writes for token-classification)."""
    return write_tiny_ner_task(tmp_path_factory.mktemp("tiny-ner"))
