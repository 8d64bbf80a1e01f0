"""Each language's own unlabeled text (data.languages[*].unlabeled) read into sentences of words.

A language entry lists files, globs or folders, local or remote (s3:// gs:// hf:// http(s)://).
A folder means the files directly in it with a known suffix; a glob its matches, sorted. Formats by
suffix: .txt (and .text) one sentence a line; .jsonl / .parquet / .csv a table with
data.unlabeled_text_column (raw text) or data.tokens_column (words); the CoNLL suffixes their words.
Raw text is cleaned like every other text (data.clean_html, data.normalize_whitespace) and split
into words by data.pretokenizer and data.segmenter, the rule the exported tagger applies to the
text it serves. Faults (missing, empty, not UTF-8, the wrong column) are one line naming the
language entry and the file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
from pathlib import Path

import pandas as pd

from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import DataConfig, LanguageSource
from components.lib.sources import remote, token_ingest
from components.lib.sources.ingest import open_source, unlabeled_split
from components.lib.sources.token_ingest import read_conll_file, split_words, table_sentences

LINE_SUFFIXES = (".txt", ".text")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
CONLL_SUFFIXES = tuple(s for s in token_ingest.CONLL_SUFFIXES if s not in LINE_SUFFIXES)  # .txt is lines here
KNOWN = LINE_SUFFIXES + TABLE_SUFFIXES + CONLL_SUFFIXES
GLOB_CHARS = ("*", "?", "[")


def _entry(ls: LanguageSource) -> str:
    return f"data.languages entry '{ls.lang}', unlabeled"


def expand(spec: str, ls: LanguageSource) -> list[str]:
    """Files named by one unlabeled spec: itself, a folder's known files, or a glob's matches."""
    where = _entry(ls)
    if remote.is_remote(spec):
        if not any(c in spec for c in GLOB_CHARS) and not spec.endswith("/"):
            return [spec]
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(spec)
            found = fs.glob(path) if any(c in spec for c in GLOB_CHARS) else fs.find(path)
        except Exception as err:  # a backend missing, auth, unreachable: one line
            raise DataError(f"{spec}: cannot list ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}) ({where})") from None
        protocol = spec.split("://", 1)[0]
        files = sorted(f"{protocol}://{f}" for f in found if remote.suffix(f) in KNOWN)
    elif any(c in spec for c in GLOB_CHARS):
        files = sorted(f for f in glob.glob(str(Path(spec).expanduser()), recursive=True)
                       if Path(f).is_file() and Path(f).suffix.lower() in KNOWN)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: file not found ({where})")
        if not path.is_dir():
            return [str(path)]
        files = sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in KNOWN)
    if not files:
        raise DataError(f"{spec}: no unlabeled files found (known suffixes {', '.join(KNOWN)}) ({where})")
    return files


def read_lines(path: Path, where: str) -> list[str]:
    """A one-sentence-a-line UTF-8 file -> its non-blank lines; not UTF-8 names the line and byte."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{where}:{line}: not UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                        "re-encode the file as UTF-8") from None
    return [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]


def _read_one(spec: str, dc: DataConfig, ls: LanguageSource) -> tuple[list[list[str]], dict]:
    """One file -> (sentences of words, provenance)."""
    where = f"{spec} ({_entry(ls)})"
    suffix = remote.suffix(spec)
    if suffix in CONLL_SUFFIXES:
        s = read_conll_file(spec, "", dc, tag_field=False, where=where)
        return s.words, {"path": spec, "format": "conll", "sha256": s.provenance["sha256"], "rows": len(s.words)}
    if suffix in TABLE_SUFFIXES:
        src = open_source(spec, "auto", None, [dc.tokens_column, dc.unlabeled_text_column, "id"])
        at, raw = src.split(unlabeled_split(src), "unlabeled")
        s = table_sentences(raw, f"{at} ({_entry(ls)})", "", dc, False, None, {})
        return s.words, {**src.provenance, "path": spec, "rows": len(raw)}
    if suffix not in LINE_SUFFIXES:
        raise UserError(f"{spec}: unknown unlabeled format '{suffix or '(no suffix)'}' (expected {', '.join(KNOWN)}) ({_entry(ls)})")
    with remote.local_copy(spec) if remote.is_remote(spec) else contextlib.nullcontext(Path(spec).expanduser()) as path:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines = read_lines(path, spec)
    if not lines:
        raise DataError(f"{spec}: empty, no sentences ({_entry(ls)})")
    return split_words(pd.Series(lines, dtype=object), dc), {"path": spec, "format": "lines", "sha256": digest, "rows": len(lines)}


def read_language_unlabeled(ls: LanguageSource, dc: DataConfig) -> tuple[pd.DataFrame, dict]:
    """(id, words, lang) of every unlabeled sentence of one language entry, in file order; ids are
    `<lang>/unsup/<file index>/<row>` (unique, and they say which file a sentence came from); and
    the provenance of every file read."""
    assert ls.unlabeled
    ids: list[str] = []
    words: list[list[str]] = []
    files: list[dict] = []
    k = 0
    for spec in ls.unlabeled:
        for path in expand(spec, ls):
            try:
                got, prov = _read_one(path, dc, ls)
            except DataError as err:
                msg = str(err)
                raise DataError(msg if _entry(ls) in msg else f"{msg} ({_entry(ls)})") from None
            keep = [i for i, w in enumerate(got) if w]  # a line of only punctuation-free spaces
            ids += [f"{ls.lang}/unsup/{k}/{i}" for i in keep]
            words += [got[i] for i in keep]
            files.append({**prov, "sentences": len(keep), "without_words": len(got) - len(keep)})
            k += 1
    return pd.DataFrame({"id": ids, "tokens": words, "lang": [ls.lang] * len(ids)}), {"files": files}
