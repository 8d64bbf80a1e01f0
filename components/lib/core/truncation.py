"""Truncating tokenisation that does not tokenise what truncation throws away.

`tokenizer(texts, truncation=True, max_length=n)` tokenises every text whole and then keeps its
first n pieces. On long documents (an IMDB review is ~300 pieces, a news article thousands) most
of that work is discarded, and for a BiLSTM student the tokeniser is a large share of inference
time. `tokenize_truncated` tokenises a whitespace-bounded head of each long text instead and
returns exactly the ids of the whole-text call:

- pre-tokenisers of WordPiece, SentencePiece (Metaspace) and byte-level BPE tokenisers split at
  whitespace, and their normalisers act within a word, so a head cut just before a whitespace
  character tokenises to the same leading pieces as the whole text;
- a head that still reaches max_length pieces was truncated too, so its ids are the whole text's;
  a head that falls short (very long words) is tokenised again whole.
"""

from __future__ import annotations

from collections.abc import Sequence

# Characters read per piece of budget. English word pieces average ~4.5 characters (IMDB 4.4,
# BBC News 4.9); 8 leaves room for long words before a head has to be tokenised again.
CHARS_PER_PIECE = 8


def head(text: str, max_chars: int) -> str:
    """The text up to the last whitespace at or before max_chars (the whole text when short enough
    or when no whitespace lies in that window)."""
    if len(text) <= max_chars:
        return text
    for i in range(max_chars, 0, -1):
        if text[i].isspace():
            return text[:i]
    return text


def tokenize_truncated(tokenizer, texts: Sequence[str], max_length: int, **kwargs):
    """tokenizer(list(texts), truncation=True, max_length=max_length, **kwargs) with the same ids,
    tokenising only the head of long texts. Returns the tokenizer's BatchEncoding (list values)."""
    texts = list(texts)
    heads = [head(t, CHARS_PER_PIECE * max_length) for t in texts]
    enc = tokenizer(heads, truncation=True, max_length=max_length, **kwargs)
    short = [i for i, (h, t, ids) in enumerate(zip(heads, texts, enc["input_ids"], strict=True))
             if len(h) < len(t) and len(ids) < max_length]
    if short:  # the head ran out of pieces before max_length: the whole text decides
        again = tokenizer([texts[i] for i in short], truncation=True, max_length=max_length, **kwargs)
        for key in enc:
            for j, i in enumerate(short):
                enc[key][i] = again[key][j]
    return enc
