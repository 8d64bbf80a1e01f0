"""Words, word pieces and tags: the pure helpers of token classification.

Every step of the token-classification path goes through these, so teacher training, pseudo-
labelling, the student and the exported model agree on one alignment rule: a word's label and
output live on its FIRST sub-piece (the standard choice for BERT-style NER); later sub-pieces and
the special tokens are ignored (-100 in training labels). Words cut off by max_length get no piece
(index -1) and are predicted as the outside tag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.lib.core.errors import UserError

IGNORE_INDEX = -100
_WORDS = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]", re.UNICODE)
_WHITESPACE = re.compile(r"\S+")
# CJK unified ideographs (+ extension A, compatibility ideographs, extensions B-F on plane 2)
HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")


def pretokenize(text: str, mode: str = "words", segment=None) -> list[tuple[str, int, int]]:
    """Split raw text into (word, start, end) character spans.
    whitespace: runs of non-space; words: letter/digit runs (inner - and ' kept) and single punctuation.
    segment (core/segment.py, e.g. jieba): splits each span holding Han characters (Chinese is
    written without spaces, so the regex alone makes a whole clause one word) into its words."""
    pattern = _WHITESPACE if mode == "whitespace" else _WORDS
    if mode not in ("whitespace", "words"):
        raise UserError(f"unknown pretokenizer '{mode}' (expected whitespace or words)")
    out = []
    for m in pattern.finditer(text):
        word, start = m.group(), m.start()
        if segment is not None and HAN.search(word):
            out.extend((w, start + a, start + b) for w, a, b in segment(word))
        else:
            out.append((word, start, m.end()))
    return out


@dataclass(frozen=True)
class WordEncoding:
    """input_ids[i]: the piece ids of sentence i (with special tokens); first_piece[i][w]: the
    position of word w's first piece in input_ids[i], or -1 when the word was cut off (or the
    tokenizer produced no piece for it)."""

    input_ids: list[np.ndarray]
    first_piece: list[np.ndarray]

    def covered(self, i: int) -> int:
        """How many leading words of sentence i have a piece (words are cut only at the end)."""
        fp = self.first_piece[i]
        missing = np.flatnonzero(fp < 0)
        return int(missing[0]) if len(missing) else len(fp)


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"token classification needs a fast tokenizer (got {type(tokenizer).__name__}); "
                        "save the model with its tokenizer.json")


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], max_length: int) -> WordEncoding:
    """Tokenise pre-split sentences and map each word to its first piece."""
    _require_fast(tokenizer)
    if not sentences:
        return WordEncoding([], [])
    enc = tokenizer([list(s) for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    ids, firsts = [], []
    for i, words in enumerate(sentences):
        word_ids = enc.word_ids(i)
        first = np.full(len(words), -1, dtype=np.int64)
        for pos in range(len(word_ids) - 1, -1, -1):
            w = word_ids[pos]
            if w is not None:
                first[w] = pos
        ids.append(np.asarray(enc["input_ids"][i], dtype=np.int64))
        firsts.append(_first_prefix(first))
    return WordEncoding(ids, firsts)


def _first_prefix(first: np.ndarray) -> np.ndarray:
    """Words are covered as a prefix: a word with no piece (e.g. a lone control character the
    tokenizer drops) inside the covered part points at the previous word's piece rather than
    ending coverage; everything after the last covered word stays -1."""
    covered = np.flatnonzero(first >= 0)
    if not len(covered):
        return first
    last = covered[-1]
    out = first.copy()
    for w in range(1, last + 1):
        if out[w] < 0:
            out[w] = out[w - 1]
    if out[0] < 0:
        out[0] = first[covered[0]]
    return out


def piece_labels(first_piece: np.ndarray, tags: Sequence[int], num_pieces: int) -> np.ndarray:
    """Per-piece training labels: the word's tag on its first piece, IGNORE_INDEX elsewhere."""
    labels = np.full(num_pieces, IGNORE_INDEX, dtype=np.int64)
    tags = np.asarray(tags, dtype=np.int64)
    ok = first_piece >= 0
    # reversed so that when two words share a piece (a word with no piece of its own) the first wins
    labels[first_piece[ok][::-1]] = tags[: len(first_piece)][ok][::-1]
    return labels


def gather_words(piece_values: np.ndarray, first_piece: np.ndarray) -> np.ndarray:
    """(T, ...) per-piece values -> (n_covered, ...) per-word values (covered words only)."""
    fp = first_piece[first_piece >= 0]
    return piece_values[fp]


def first_pieces_index(firsts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A batch's first-piece positions, flat: rows (N,) and cols (N,) int64 (row r, position
    firsts[r][w]) and the words per row; what a tagger's head reads (BiLSTMStudent.logits_at and
    the exported graph's rows/cols inputs). split_words undoes the flattening."""
    counts = [len(f) for f in firsts]
    rows = np.repeat(np.arange(len(firsts), dtype=np.int64), counts)
    cols = np.concatenate([np.asarray(f, dtype=np.int64) for f in firsts]) if firsts else np.zeros(0, np.int64)
    return rows, cols, counts


def split_words(flat: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """(N, C) per-word outputs of a batch -> one (counts[r], C) array per row."""
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def word_outputs(batches, firsts: Sequence[np.ndarray], num_labels: int, forward) -> list[np.ndarray]:
    """A tagger's per-sentence (n_covered, C) outputs at each word's first piece, batch by batch:
    `batches` yields (sentence indices, ids, mask) and `forward(ids, mask, rows, cols)` returns the
    (N, C) numpy outputs at those pieces (BiLSTMStudent.logits_at, or an exported graph through
    graph_word_logits). Sentences no batch holds get (0, C)."""
    out = [np.zeros((0, num_labels), np.float32)] * len(firsts)
    for idx, ids, mask in batches:
        rows, cols, counts = first_pieces_index([firsts[i] for i in idx])
        for i, part in zip(idx, split_words(forward(ids, mask, rows, cols), counts), strict=True):
            out[i] = part
    return out


WORD_GRAPH_INPUTS = ("rows", "cols")


def graph_word_logits(session, ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, C) logits at (rows, cols) from an exported tagger's ONNX Runtime session: a graph with the
    rows/cols inputs computes the head there alone; one exported before them, whose logits are
    (B, T, C) per piece, is indexed there (the same numbers)."""
    feeds = {"input_ids": ids, "attention_mask": mask}
    if set(WORD_GRAPH_INPUTS) <= {i.name for i in session.get_inputs()}:
        return session.run(["logits"], {**feeds, "rows": rows, "cols": cols})[0]
    return session.run(["logits"], feeds)[0][rows, cols]


def entity_type(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); also accepts IOBES prefixes and PER without a prefix."""
    if tag.upper() == "O" or not tag:
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0].upper() in "BIESLU":
        return tag[0].upper(), tag[2:]
    return "I", tag


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, first_word, end_word_exclusive) of an IOB1/IOB2/IOBES tag sequence,
    read like conlleval/seqeval's default mode: an I- that does not continue an entity of the same
    type starts a new one."""
    out: list[tuple[str, int, int]] = []
    cur: tuple[str, int] | None = None
    for i, tag in enumerate(tags):
        prefix, typ = entity_type(tag)
        starts = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and (cur is None or cur[0] != typ))
        if prefix == "O" or starts:
            if cur is not None:
                out.append((cur[0], cur[1], i))
                cur = None
        if prefix != "O" and (starts or cur is None):
            cur = (typ, i)
        if prefix in ("E", "L", "S", "U") and cur is not None:
            out.append((cur[0], cur[1], i + 1))
            cur = None
    if cur is not None:
        out.append((cur[0], cur[1], len(tags)))
    return out
