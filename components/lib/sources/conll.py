"""CoNLL / IOB files: one word per line with whitespace-separated fields, sentences separated by
blank lines.

    EU      NNP  B-NP  B-ORG        (CoNLL-2003: token_field=0, tag_field=-1)
    rejects VBZ  B-VP  O
                                    <- blank or whitespace-only line (WNUT-16 uses a lone TAB)
    -DOCSTART- -X- -X- O            <- document markers are skipped

Files are read line by line (one sentence in memory at a time); a remote URI (s3://, gs://, hf://,
http(s)://) is copied to a local temporary file first (remote.py). A line with too few fields or
bytes that are not valid in the encoding raise DataError naming the file and the 1-based line, and
so does a line whose word is empty (MasakhaNER's `xho/train.txt` has ` O`) unless the caller asks
for such lines to be dropped and counted (`dropped`). detect_layout says which of the common
layouts a file has (CoNLL-U-like, or word first and tag last), from its first lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from components.lib.contracts.files import atomic_path
from components.lib.core.errors import DataError, UserError
from components.lib.sources import remote

DOCSTART = "-DOCSTART-"


class ConllSentence(NamedTuple):
    words: list[str]
    tags: list[str] | None  # None when read without a tag field (unlabeled files)
    line: int  # 1-based line of the sentence's first word, for messages


def _min_fields(token_field: int, tag_field: int | None) -> int:
    """Fewest fields for which both indices exist and point at different fields."""
    for n in range(1, 1 + max(abs(token_field), abs(tag_field or 0)) + 2):
        token_ok = -n <= token_field < n
        if tag_field is None:
            if token_ok:
                return n
        elif token_ok and -n <= tag_field < n and token_field % n != tag_field % n:
            return n
    raise UserError(f"CoNLL token field {token_field} and tag field {tag_field} name the same field "
                    "(set data.conll_token_field / data.conll_tag_field)")


def iter_conll(
    path: str | Path,
    token_field: int = 0,
    tag_field: int | None = -1,
    where: str | None = None,
    encoding: str = "utf-8",
    digest: hashlib._Hash | None = None,
    comments: bool = False,
    tabs: bool = False,
    dropped: list[int] | None = None,
) -> Iterator[ConllSentence]:
    """Stream the sentences of a CoNLL file. `where` names the file in messages (default: path);
    `digest` (a hashlib object) is fed the raw bytes, so a caller gets the file's hash in one pass.
    comments: skip lines starting with # (CoNLL-U's # sent_id / # text); off by default because in
    plain CoNLL a word may start with # (a hashtag in WNUT-16). tabs: fields are separated by tabs
    only, so a word may hold a space (CoNLL-U: Portuguese "34 470"); else by any whitespace.
    A line whose word is empty (whitespace-separated: the line starts with the separator and lacks
    the word field; tab-separated: the word field is blank; words only, without a tag field: the
    line starts with the separator and has fewer fields than an earlier line) is a DataError, or
    with `dropped` (a list) skipped and its line number appended there."""
    where = where or str(path)
    if remote.is_remote(str(path)):
        with remote.local_copy(str(path)) as copy:
            yield from iter_conll(copy, token_field, tag_field, where, encoding, digest, comments, tabs, dropped)
        return
    need = _min_fields(token_field, tag_field)
    widest = 0  # the most fields a line of this file had so far
    words: list[str] = []
    tags: list[str] = []
    first = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: expected a CoNLL file, found a directory") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if digest is not None:
                digest.update(raw)
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 and encoding.lower().replace("_", "-") == "utf-8" else encoding)
            except UnicodeDecodeError as err:
                raise DataError(f"{where}:{lineno}: not valid {encoding} ({err.reason} at byte {err.start} of the line)") from None
            if comments and line.startswith("#"):
                continue
            fields = line.rstrip("\r\n").split("\t") if tabs and line.strip() else line.split()
            if not fields or fields[0].upper() == DOCSTART:  # a sentence (or document) ends here
                if words:
                    yield ConllSentence(words, tags if tag_field is not None else None, first)
                words, tags = [], []
                continue
            widest = max(widest, len(fields))
            # words only (MasakhaNER's ` O` read as unlabeled text): a line should have as many fields as earlier ones
            if _empty_word(line, fields, need if tag_field is not None else widest, token_field, tabs):
                if dropped is None:
                    raise DataError(f"{where}:{lineno}: the word is empty ({line.rstrip(chr(10) + chr(13))!r}); set "
                                    "data.conll_empty_words=drop to drop such lines (they are counted)")
                dropped.append(lineno)
                continue
            if len(fields) < need:
                text = line.strip()
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise DataError(f"{where}:{lineno}: expected at least {need} fields, got {len(fields)} ({shown!r})")
            if not words:
                first = lineno
            words.append(fields[token_field])
            if tag_field is not None:
                tags.append(fields[tag_field])
    if words:  # the last sentence needs no closing blank line
        yield ConllSentence(words, tags if tag_field is not None else None, first)


def _empty_word(line: str, fields: list[str], need: int, token_field: int, tabs: bool) -> bool:
    if tabs:
        return len(fields) >= need and not fields[token_field].strip()
    # ' O': split() sees one field; the leading separator says the missing one is the word
    return token_field == 0 and len(fields) == need - 1 and line[:1] in (" ", "\t")


class Layout(NamedTuple):
    """A file's field layout as detect_layout found it: iter_conll's settings and what to say."""

    token_field: int
    tag_field: int
    comments: bool
    tabs: bool
    description: str


CONLLU_LIKE = Layout(1, 2, True, True, "CoNLL-U-like (tab, # comments, word field 1, tag field 2)")
WORD_TAG_TAB = Layout(0, -1, False, True, "word TAB tag (tab, no comments, word first, tag last)")
WORD_TAG_SPACE = Layout(0, -1, False, False, "word tag (whitespace, no comments, word first, tag last; MasakhaNER)")


def detect_layout(path: str | Path, where: str | None = None, lines: int = 200) -> Layout:
    """The layout of a local CoNLL file from its first `lines` non-blank lines: CoNLL-U-like when
    every data line has 3+ tab-separated fields, the first an integer (# lines are comments then);
    else word first and tag last, tab-separated when every data line holds a tab, else by
    whitespace. A file with no data line among them is a DataError (nothing to detect from)."""
    where = where or str(path)
    head: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    head.append(line.rstrip("\r\n"))
                if len(head) >= lines:
                    break
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: expected a CoNLL file, found a directory") from None
    comments = any(t.startswith("#") for t in head)
    rows = [t for t in head if not t.startswith("#")] if comments else head
    if rows and all(len(t.split("\t")) >= 3 and t.split("\t")[0].strip().isdigit() for t in rows):
        return CONLLU_LIKE
    rows = [t for t in head if t.split()[0].upper() != DOCSTART]
    if not rows:
        raise DataError(f"{where}: no word lines in its first {lines} lines to detect the CoNLL layout from "
                        "(set data.conll_layout: fields and the data.conll_* settings)")
    return WORD_TAG_TAB if all("\t" in t for t in rows) else WORD_TAG_SPACE


def read_conll(path: str | Path, token_field: int = 0, tag_field: int = -1,
               encoding: str = "utf-8") -> list[tuple[list[str], list[str]]]:
    """All sentences of a CoNLL file as (words, tags) pairs."""
    return [(s.words, s.tags or []) for s in iter_conll(path, token_field, tag_field, encoding=encoding)]


def write_conll(sentences: Iterable[tuple[list[str], list[str]]], path: str | Path, sep: str = "\t") -> None:
    """Write `word<sep>tag` lines with a blank line after each sentence (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for n, (words, tags) in enumerate(sentences):
            if len(words) != len(tags) or not words:
                raise ValueError(f"sentence {n}: {len(words)} words and {len(tags)} tags")
            for word, tag in zip(words, tags, strict=True):
                if not word or len(word.split()) != 1 or len(tag.split()) != 1:
                    raise ValueError(f"sentence {n}: word {word!r} / tag {tag!r} is empty or holds whitespace")
                f.write(f"{word}{sep}{tag}\n")
            f.write("\n")
