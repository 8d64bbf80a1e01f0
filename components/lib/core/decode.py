"""Decoding a tagger's per-word logits into tags: the one module that the teacher's and the
student's dev scores, evaluate, export's ONNX check, the pyfunc and so serving all call, so a CRF
is a change here and nowhere else. Shipped inside the exported tagger (export/tokens.py
CODE_MODULES): numpy only.

Two decodings (evaluate.decoding):
- argmax: the best tag of each covered word on its own;
- constrained (the default): the best-scoring tag SEQUENCE (Viterbi, emissions = log-softmax of
  each word's logits) among those a tag scheme allows: no I-X at sentence start, after O or after
  B-Y/I-Y of another type; with end tags (IOBES E-/S-, BILOU L-/U-) also B-X/I-X only before
  I-X/E-X, and nothing after an open B-X/I-X but I-X/E-X (so no sentence ends inside an entity).
  When the argmax sequence is already allowed it is the answer (it maximises every word's score).
  A tag set with no prefixed tag (only O, or plain labels), or any unprefixed label among prefixed
  ones (a mixed scheme), decodes by argmax: there is nothing well defined to constrain.
Words cut off by max_length (no logits) are the outside tag; the last covered word must be a tag
the outside tag may follow. Tags are read as IOB2 (B- starts every entity): IOB1 data, whose
entities may start with I-, should use argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECODINGS = ("constrained", "argmax")
OPEN, CONTINUE, FRESH = frozenset("BI"), frozenset("IEL"), frozenset("OBSU")


def outside_index(label_names: Sequence[str]) -> int:
    """Index of the O tag (0 when the tag set has none)."""
    for i, name in enumerate(label_names):
        if name.upper() == "O":
            return i
    return 0


def fill_uncovered(word_pred: np.ndarray, n_words: int, outside: int) -> np.ndarray:
    """Predictions for the covered prefix -> a full sentence, cut-off words tagged `outside`."""
    out = np.full(n_words, outside, dtype=np.int64)
    out[: len(word_pred)] = word_pred
    return out


def _prefix(name: str) -> tuple[str, str] | None:
    """'B-PER' -> ('B', 'PER'), 'O' -> ('O', ''), a plain label -> None (as tokens.entity_type reads prefixes)."""
    if not name or name.upper() == "O":
        return "O", ""
    if len(name) > 2 and name[1] in "-_" and name[0].upper() in "BIESLU":
        return name[0].upper(), name[2:]
    return None


def allowed_transitions(label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(start (C,), trans (C_prev, C_next), end (C,)) as 0 = allowed, -inf = forbidden; None when the
    tag set has nothing to constrain (no prefixed tag, or an unprefixed label among them)."""
    parsed = [_prefix(n) for n in label_names]
    if any(p is None for p in parsed) or all(p[0] == "O" for p in parsed):
        return None
    pre = np.array([p[0] for p in parsed])
    typ = np.array([p[1] for p in parsed], dtype=object)
    has_end = bool(np.isin(pre, list("ESLU")).any())  # IOBES/BILOU: entities close explicitly
    is_open = np.isin(pre, list(OPEN))  # (C,) an entity goes on after this tag (B-X, I-X)
    closed = ~is_open if has_end else np.ones(len(pre), bool)  # may stand before a fresh tag / the end
    cont = np.isin(pre, list(CONTINUE))  # I-X, E-X, L-X: only inside an open entity of type X
    fresh = np.isin(pre, list(FRESH))  # O, B-X, S-X, U-X
    same = typ[:, None] == typ[None, :]  # (C, C)
    ok = (cont[None, :] & is_open[:, None] & same) | (fresh[None, :] & closed[:, None])  # (C_prev, C_next)
    mask = lambda a: np.where(a, 0.0, -np.inf)  # noqa: E731
    return mask(fresh), mask(ok), mask(closed)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., C) -> (..., C) log-probabilities in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def viterbi(emissions: np.ndarray, start: np.ndarray, trans: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, float]:
    """(n, C) per-word scores -> the best (n,) tag path under start/trans/end and its score
    (-inf when no path is allowed). Vectorised over tags, one step per word."""
    n, c = emissions.shape
    back = np.zeros((n, c), dtype=np.int64)  # (n, C) best previous tag of each tag at each word
    score = start + emissions[0]  # (C,)
    cols = np.arange(c)
    for t in range(1, n):
        cand = score[:, None] + trans  # (C_prev, C_next)
        back[t] = cand.argmax(axis=0)
        score = cand[back[t], cols] + emissions[t]
    score = score + end
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path, float(score[path[-1]])


@dataclass(frozen=True, eq=False)
class Decoder:
    """A tag set's decoder: __call__(word_logits (n_covered, C), n_words) -> (n_words,) tag ids."""

    outside: int
    allowed: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # allowed_transitions; None: argmax

    def path_ok(self, ids: np.ndarray, cut: bool) -> bool:
        """Whether the covered words' tags `ids` are an allowed sequence (`cut`: cut-off words follow)."""
        start, trans, end = self.allowed
        last = trans[:, self.outside] if cut else end
        return bool(start[ids[0]] == 0 and last[ids[-1]] == 0 and (trans[ids[:-1], ids[1:]] == 0).all())

    def __call__(self, word_logits: np.ndarray, n_words: int) -> np.ndarray:
        logits = np.asarray(word_logits)
        best = logits.argmax(-1) if len(logits) else np.zeros(0, dtype=np.int64)
        cut = len(logits) < n_words
        if self.allowed is None or not len(logits) or self.path_ok(best, cut):
            return fill_uncovered(best, n_words, self.outside)
        start, trans, end = self.allowed
        path, score = viterbi(log_softmax(logits), start, trans, trans[:, self.outside] if cut else end)
        # no allowed path at all (a tag set that cannot close an entity): the argmax, not -inf's
        return fill_uncovered(path if np.isfinite(score) else best, n_words, self.outside)


def decoder(label_names: Sequence[str], decoding: str) -> Decoder:
    """The Decoder of a tag set for decoding 'constrained' or 'argmax'."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r} (expected one of {', '.join(DECODINGS)})")
    allowed = allowed_transitions(label_names) if decoding == "constrained" else None
    return Decoder(outside_index(label_names), allowed)


def decode_tags(word_logits: Sequence[np.ndarray], n_words: Sequence[int], label_names: Sequence[str],
                decoding: str) -> list[list[str]]:
    """Per sentence (n_covered, C) logits -> a tag name for every one of its n_words words."""
    dec = decoder(label_names, decoding)
    return [[label_names[k] for k in dec(lg, n)] for lg, n in zip(word_logits, n_words, strict=True)]


def invalid_transitions(tags: Sequence[Sequence[str]], label_names: Sequence[str]) -> int:
    """How many places in these tag sequences the constrained decoding forbids (a sentence's start,
    each neighbouring pair, its end); 0 for a tag set with nothing to constrain."""
    allowed = allowed_transitions(label_names)
    if allowed is None:
        return 0
    start, trans, end = allowed
    index = {name: i for i, name in enumerate(label_names)}
    bad = 0
    for row in tags:
        if not len(row):
            continue
        ids = np.array([index[t] for t in row])
        bad += int(start[ids[0]] != 0) + int(end[ids[-1]] != 0) + int((trans[ids[:-1], ids[1:]] != 0).sum())
    return bad
