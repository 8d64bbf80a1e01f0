"""Decoding a tagger's per-word logits into tags: the one function that the teacher's and the
student's dev scores, evaluate, export's ONNX check, the pyfunc and so serving all call, so a CRF
or constrained decoding is a change here and nowhere else.

Today: the best tag of each covered word (argmax); words cut off by max_length (no logits) are the
outside tag. Shipped inside the exported tagger (export/tokens.py CODE_MODULES): numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def decode_words(word_logits: np.ndarray, n_words: int, outside: int) -> np.ndarray:
    """(n_covered, C) logits of one sentence's covered words -> (n_words,) tag ids."""
    return fill_uncovered(np.asarray(word_logits).argmax(-1), n_words, outside)


def decode_tags(word_logits: Sequence[np.ndarray], n_words: Sequence[int], label_names: Sequence[str]) -> list[list[str]]:
    """Per sentence (n_covered, C) logits -> a tag name for every one of its n_words words."""
    outside = outside_index(label_names)
    return [[label_names[k] for k in decode_words(lg, n, outside)] for lg, n in zip(word_logits, n_words, strict=True)]
