"""Plain builders the tests share (no fixtures here: those live in conftest.py, which pytest injects).

- the synthetic topic task: make_topic_texts, write_tiny_task (TOPICS, FILLER, LABELS);
- the synthetic PER/LOC/ORG task: make_ner_sentences, write_tiny_ner_task (NER_TAGS);
- tiny sequence-classification models and work dirs: build_tiny_student, build_tiny_teacher,
  make_work_dir, tiny_cfg (a 2-layer BERT classifier, random so a weak teacher, and BiLSTM students
  trained for a few steps with the real MiniLM tokenizer);
- tiny token-classification models and work dirs: build_tiny_token_teacher, build_tiny_token_student,
  make_ner_work_dir, ner_cfg (MAX_LEN, piece_batch, pad_rows).

Test modules import from here: ``from tests.helpers import ...``. torch, transformers and the
project's modules are imported inside the functions, so loading conftest stays cheap.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.lib.settings.config import PipelineConfig

# ---------------------------------------------------------------- the synthetic topic task

TOPICS = {
    "sport": "match goal team coach league striker season win stadium player referee cup".split(),
    "tech": "software chip computer network phone internet data code laptop robot server app".split(),
    "money": "bank market shares profit investor price economy budget tax trade loan stocks".split(),
}
FILLER = "the a of and to in on with for by at from this that it was is".split()
LABELS = ["sport", "tech", "money"]  # the order make_topic_texts uses


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


def write_tiny_task(out: Path, train: int = 8, dev: int = 8, test: int = 20, transfer: int = 80, seed: int = 0) -> Path:
    """train/dev/test/transfer Parquet of the synthetic topic task, per the data contracts."""
    from components.lib.contracts import data

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


# ---------------------------------------------------------------- the synthetic NER task

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
    from components.lib.contracts import data, token_data

    sents, tags, names = make_ner_sentences(train + dev + test + transfer, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    cuts = {"train": (0, train), "dev": (train, train + dev), "test": (train + dev, train + dev + test)}
    for split, (lo, hi) in cuts.items():
        lang = [("en" if i % 2 else "xx") for i in range(lo, hi)] if langs else None
        table = token_data.token_labeled_table([f"{split}-{i}" for i in range(lo, hi)], sents[lo:hi], tags[lo:hi], names, lang)
        data.write_table(table, out / f"{split}.parquet", row_group_rows=64)
    lo = train + dev + test
    table = token_data.token_transfer_table([f"transfer-{i}" for i in range(lo, len(sents))], sents[lo:])
    data.write_table(table, out / "transfer.parquet", row_group_rows=64)
    return out


# ---------------------------------------------------------------- tiny classification models

def build_tiny_student(out: Path, tokenizer_dir: Path, steps: int = 40, seed: int = 0, mode: str = "soft+repr",
                       embed_rank: int | None = None) -> Path:
    """A 16-wide BiLSTM over the trimmed MiniLM vocab (embed_rank: factorised embeddings), trained
    `steps` Adam steps on topic texts."""
    import torch
    from transformers import AutoTokenizer

    from components.lib.core.student import BiLSTMStudent, StudentArch, VocabMap
    from components.lib.models.student_io import encode, save_student, tokenize_ids

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts, labels, names = make_topic_texts(60, seed=7)
    assert names == LABELS
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for ids in tokenize_ids(tok, texts, 64):
        np.add.at(counts, ids, 1)
    vocab = VocabMap.from_counts(counts, 1, None, [tok.cls_token_id, tok.sep_token_id], tok.pad_token_id, tok.unk_token_id)
    arch = StudentArch(vocab_size=len(vocab), embed_dim=16, hidden=16, layers=1, dropout=0.0, repr_dim=32, num_labels=3,
                       embed_rank=embed_rank)
    torch.manual_seed(seed)
    model = BiLSTMStudent(arch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    y = torch.tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        ids, mask = encode((tok, vocab), [texts[i] for i in idx], 64)
        loss = torch.nn.functional.cross_entropy(model.logits(ids, mask), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_student(out, model, arch, vocab, tok, names, mode, 64, teacher={"model": "tiny-bert"})
    return out


def build_tiny_teacher(out: Path, tokenizer_dir: Path, steps: int = 0) -> Path:
    """A 2-layer, 32-wide BertForSequenceClassification over the task's labels, trained `steps` steps."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    texts, labels, _ = make_topic_texts(60, seed=7)
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (16,), generator=gen)
        loss = model(**tok([texts[i] for i in idx], padding=True, return_tensors="pt"), labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_work_dir(root: Path, tokenizer_dir: Path, students: dict[str, int], teacher_steps: int = 0) -> Path:
    """work_dir with data/, teacher/ and student/<mode>/ (mode -> training steps), as the steps lay it out."""
    write_tiny_task(root / "data")
    build_tiny_teacher(root / "teacher", tokenizer_dir, teacher_steps)
    for mode, steps in students.items():
        build_tiny_student(root / "student" / mode.replace("+", "_"), tokenizer_dir, steps=steps, mode=mode)
    return root


def tiny_cfg(work_dir: Path, tracking_uri: str | None, **sections) -> PipelineConfig:
    from components.lib.settings.config import PipelineConfig

    raw = {
        "work_dir": str(work_dir),
        "evaluate": {"throughput_rows": 64, "latency_runs": 5, "num_threads": 1},
        "export": {"num_threads": 1, "model_name": "tiny-student"},
        "tracking": {"enabled": tracking_uri is not None, "uri": tracking_uri, "experiment": "tests"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return PipelineConfig.model_validate(raw)


# ---------------------------------------------------------------- tiny token-classification models

MAX_LEN = 24  # student pieces: short enough that long inputs get cut off


def piece_batch(tok, sentences, tags, max_length):
    """Pre-split sentences + tag ids -> teacher piece ids (ragged), per-piece labels (-100 off first pieces)."""
    from components.lib.core.tokens import encode_words, piece_labels

    enc = encode_words(tok, sentences, max_length)
    labels = [piece_labels(enc.first_piece[i], tags[i], len(enc.input_ids[i])) for i in range(len(sentences))]
    return enc.input_ids, labels


def pad_rows(rows, value):
    """Ragged 1-D rows -> one (rows, longest) tensor, right-padded with value."""
    import torch

    t = max(len(r) for r in rows)
    return torch.tensor(np.stack([np.pad(r, (0, t - len(r)), constant_values=value) for r in rows]))


def build_tiny_token_teacher(out: Path, base_dir: Path, steps: int = 40) -> Path:
    """A 2-layer, 32-wide BertForTokenClassification over NER_TAGS (from tiny_bert_dir), trained `steps` steps."""
    import torch

    from components.lib.models.teacher import load_teacher

    torch.manual_seed(0)
    model, tok = load_teacher(base_dir, label_names=NER_TAGS, task="token-classification")
    sents, tags, _ = make_ner_sentences(80, seed=5)
    ids, labels = piece_batch(tok, sents, tags, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(sents), (16,), generator=gen).tolist()
        x = pad_rows([ids[i] for i in idx], tok.pad_token_id)
        loss = model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=pad_rows([labels[i] for i in idx], -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_token_student(out: Path, tokenizer_dir: Path, steps: int = 60, seed: int = 0, mode: str = "soft+repr",
                             task: tuple[list[list[str]], list[list[int]], list[str]] | None = None,
                             embed_rank: int | None = None) -> Path:
    """A 16-wide BiLSTM tagger over the trimmed MiniLM vocab (embed_rank: factorised embeddings),
    trained `steps` Adam steps on gold tags (of `task`: sentences, tag ids, tag names; else the
    synthetic English NER sentences)."""
    import torch
    from transformers import AutoTokenizer

    from components.lib.core.student import PAD, BiLSTMStudent, StudentArch, VocabMap
    from components.lib.models.student_io import save_student

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sents, tags, names = task or make_ner_sentences(80, seed=5)
    ids, labels = piece_batch(tok, sents, tags, MAX_LEN)
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for x in ids:
        np.add.at(counts, x, 1)
    vocab = VocabMap.from_counts(counts, 1, None, [tok.cls_token_id, tok.sep_token_id], tok.pad_token_id, tok.unk_token_id)
    arch = StudentArch(vocab_size=len(vocab), embed_dim=16, hidden=16, layers=1, dropout=0.0, repr_dim=32,
                       num_labels=len(names), task="token-classification", embed_rank=embed_rank)
    torch.manual_seed(seed)
    model = BiLSTMStudent(arch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(sents), (32,), generator=gen).tolist()
        x = pad_rows([vocab.encode(ids[i]).astype(np.int64) for i in idx], PAD)  # (B, T) student ids
        y = pad_rows([labels[i] for i in idx], -100)  # (B, T)
        logits = model.logits(x, (x != PAD).long())  # (B, T, C)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, arch.num_labels), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_student(out, model, arch, vocab, tok, names, mode, MAX_LEN, teacher={"model": "tiny-bert-ner"})
    return out


def make_ner_work_dir(root: Path, base_dir: Path, students: dict[str, int], teacher: Path | None = None,
                      langs: bool = False) -> Path:
    """work_dir with data/, teacher/ and student/<mode>/ (mode -> training steps), as the steps lay it out."""
    write_tiny_ner_task(root / "data", langs=langs)
    if teacher is None:
        build_tiny_token_teacher(root / "teacher", base_dir)
    else:
        shutil.copytree(teacher, root / "teacher")
    for mode, steps in students.items():
        build_tiny_token_student(root / "student" / mode.replace("+", "_"), base_dir, steps=steps, mode=mode)
    return root


def ner_cfg(work_dir: Path, tracking_uri: str | None, **sections) -> PipelineConfig:
    from components.lib.settings.config import PipelineConfig

    raw = {
        "task": "token-classification",
        "work_dir": str(work_dir),
        "teacher": {"max_length": 48},
        "evaluate": {"batch_size": 16, "throughput_rows": 32, "latency_runs": 3, "num_threads": 1},
        "export": {"num_threads": 1, "model_name": "tiny-tagger"},
        "tracking": {"enabled": tracking_uri is not None, "uri": tracking_uri, "experiment": "tests"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return PipelineConfig.model_validate(raw)


# ---------------------------------------------------------------- multilingual NER files

def write_conllu(path: Path, sentences: list[list[str]], tags: list[list[int]], names: list[str],
                 prefix: str = "s") -> Path:
    """Universal NER's layout: `# sent_id` / `# text` comments, then `index<TAB>word<TAB>tag<TAB>-<TAB>-`
    lines (word in field 1, tag in field 2), a blank line after each sentence."""
    lines: list[str] = []
    for n, (words, ids) in enumerate(zip(sentences, tags, strict=True)):
        lines += [f"# sent_id = {prefix}-{n}", f"# text = {' '.join(words)}"]
        lines += [f"{i}\t{w}\t{names[t]}\t-\t-" for i, (w, t) in enumerate(zip(words, ids, strict=True), 1)] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_uner_like(root: Path, langs: tuple[str, ...] = ("aa", "bb", "cc"), train: int = 60, test: int = 20) -> Path:
    """<root>/<lang>/{train,test}.iob2 for a few synthetic 'languages' (each its own sentences:
    the language code is prefixed to every filler word, so languages never share a sentence)."""
    for k, lang in enumerate(langs):
        sents, tags, names = make_ner_sentences(train + test, seed=100 + k)
        sents = [[w if i % 2 else f"{lang}{w}" for i, w in enumerate(s)] for s in sents]
        write_conllu(root / lang / "train.iob2", sents[:train], tags[:train], names, f"{lang}-train")
        write_conllu(root / lang / "test.iob2", sents[train:], tags[train:], names, f"{lang}-test")
    return root


def language_sources(root: Path, langs: tuple[str, ...] = ("aa", "bb", "cc")) -> list[dict]:
    return [{"lang": lang, "source": str(root / lang / "train.iob2"), "test_source": str(root / lang / "test.iob2")}
            for lang in langs]


def write_masakhaner_like(root: Path, langs: tuple[str, ...] = ("mm",), train: int = 60, test: int = 20,
                          date_every: int = 0) -> Path:
    """<root>/<lang>/{train,test}.txt in MasakhaNER's layout: `word TAG` with ONE space, a blank line
    between sentences, no comments; date_every > 0 tags the last word of every such sentence B-DATE."""
    for k, lang in enumerate(langs):
        sents, tags, names = make_ner_sentences(train + test, seed=300 + k)
        rows = [[(w if i % 2 else f"{lang}{w}", names[t]) for i, (w, t) in enumerate(zip(s, ts, strict=True))]
                for s, ts in zip(sents, tags, strict=True)]
        if date_every:
            rows = [r[:-1] + [(r[-1][0], "B-DATE")] if n % date_every == 0 else r for n, r in enumerate(rows)]
        for part, chunk in (("train", rows[:train]), ("test", rows[train:])):
            (root / lang).mkdir(parents=True, exist_ok=True)
            (root / lang / f"{part}.txt").write_text("".join("".join(f"{w} {t}\n" for w, t in r) + "\n" for r in chunk))
    return root
