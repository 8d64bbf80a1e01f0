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


def tail(text: str, max_chars: int) -> str:
    """The text after the first space at or after len - max_chars - 1 (the whole text when short
    enough or when no space lies in that window): the mirror of `head`. Only a plain space: a
    SentencePiece (Metaspace) pre-tokeniser splits there and nowhere else."""
    if len(text) <= max_chars:
        return text
    cut = text.find(" ", len(text) - max_chars - 1)
    return text if cut < 0 else text[cut + 1:]


def head_tail_ids(head_ids: Sequence[int], tail_ids: Sequence[int], max_length: int, keep_tail: int,
                  n_special: int) -> list[int]:
    """The pieces (no special tokens) a head+tail cut keeps of a text whose pieces are head_ids
    ... tail_ids (both cover the whole text when it is short): all of them when they fit in
    max_length - n_special, else the first max_length - n_special - keep_tail and the last
    keep_tail (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification")."""
    room = max_length - n_special
    if keep_tail <= 0 or len(head_ids) < room:  # fits (head_ids is the whole text's pieces up to room)
        return list(head_ids[:room])
    keep_tail = min(keep_tail, room - 1)
    return list(head_ids[: room - keep_tail]) + list(tail_ids[-keep_tail:])


def special_ends(tokenizer) -> tuple[list[int], list[int]]:
    """The special pieces a single text gets before and after its own ([CLS] / [SEP], <s> / </s>)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for p in range(len(full) - len(bare) + 1):
        if full[p:p + len(bare)] == bare:
            return list(full[:p]), list(full[p + len(bare):])
    raise ValueError(f"{type(tokenizer).__name__}: cannot find where the special tokens go")


def _head_tail(tokenizer, texts: list[str], max_length: int, keep_tail: int, kwargs: dict):
    """tokenize_truncated with the last keep_tail pieces of long texts kept instead of the middle."""
    unknown = set(kwargs) - {"add_special_tokens", "padding", "return_attention_mask", "return_token_type_ids"}
    if unknown or kwargs.get("padding"):
        raise ValueError(f"head+tail truncation does not support {sorted(unknown) or 'padding'}")
    before, after = special_ends(tokenizer) if kwargs.get("add_special_tokens", True) else ([], [])
    n_special = len(before) + len(after)
    plain = {"add_special_tokens": False, "truncation": False}
    room = max_length - n_special
    heads = [head(t, CHARS_PER_PIECE * max_length) for t in texts]
    tails = [tail(t, CHARS_PER_PIECE * (keep_tail + 8)) for t in texts]
    # A window's piece at its cut edge may differ from the whole text's (a SentencePiece or byte-level
    # pre-token cut in two): only pieces past the edge word (the head's last, the tail's first) count.
    edges = [h.rsplit(None, 1)[-1] if len(h) < len(t) else "" for h, t in zip(heads, texts, strict=True)]
    edges += [w.split(" ", 1)[0] if len(w) < len(t) else "" for w, t in zip(tails, texts, strict=True)]
    n_edge = [len(x) for x in tokenizer(edges, **plain)["input_ids"]]
    head_ids = tokenizer(heads, **plain)["input_ids"]
    tail_ids = tokenizer(tails, **plain)["input_ids"]
    rows = []
    for i, t in enumerate(texts):
        h, tl = head_ids[i], tail_ids[i]
        if len(h) - n_edge[i] < room or len(tl) - n_edge[len(texts) + i] < keep_tail:
            if len(heads[i]) < len(t) or len(tails[i]) < len(t):  # too few trusted pieces: the whole text
                h = tl = tokenizer(t, **plain)["input_ids"]
        ids = head_tail_ids(h, tl, max_length, keep_tail, n_special)
        rows.append(before + ids + after)
    from transformers import BatchEncoding

    out = {"input_ids": rows}
    if kwargs.get("return_attention_mask", True):
        out["attention_mask"] = [[1] * len(r) for r in rows]
    if kwargs.get("return_token_type_ids", "token_type_ids" in tokenizer.model_input_names):
        out["token_type_ids"] = [[0] * len(r) for r in rows]
    return BatchEncoding(out)


def tokenize_truncated(tokenizer, texts: Sequence[str], max_length: int, keep_tail: int = 0, **kwargs):
    """tokenizer(list(texts), truncation=True, max_length=max_length, **kwargs) with the same ids,
    tokenising only the head of long texts. Returns the tokenizer's BatchEncoding (list values).
    keep_tail > 0: long texts keep their last keep_tail pieces instead of the ones before them
    (head+tail truncation; short texts are unchanged)."""
    texts = list(texts)
    if keep_tail > 0:
        return _head_tail(tokenizer, texts, max_length, keep_tail, kwargs)
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
