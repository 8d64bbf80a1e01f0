"""Word segmentation of text written without spaces (Chinese): the segmenters tokens.pretokenize can
apply to each run of Han characters, the same in prepare-data (raw unlabeled text -> words), the
export's checks and the exported tagger that serves raw text.

`jieba` (data.segmenter: jieba): jieba 0.42's default dictionary and HMM over the run. jieba's
dictionary is simplified Chinese and it splits traditional text badly (習近平 -> 習近 | 平...), so
the run is first mapped character by character to simplified with OpenCC's TSCharacters table (a
1:1 character map, so the offsets jieba returns are offsets into the original text) and the words
are cut from the original characters. Both packages are pure Python wheels; neither is imported
until a segmenter is asked for, and a missing one is a one-line UserError saying what to install.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from components.lib.core.errors import UserError

SEGMENTERS = ("none", "jieba")
JIEBA_PIP = "jieba==0.42.1"
OPENCC_PIP = "opencc-python-reimplemented==0.1.7"
INSTALL = f"pip install {JIEBA_PIP} {OPENCC_PIP} (or pip install 'distilflow[multilingual]')"

Segment = Callable[[str], list[tuple[str, int, int]]]  # a run of text -> (word, start, end) within it


def _require(module: str, setting: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{setting} needs the package '{module}': {INSTALL}")


def traditional_to_simplified_table() -> dict[int, str]:
    """OpenCC's TSCharacters.txt (traditional -> simplified, one character each; the first
    candidate) as a str.translate table; read from the package's data, never imported."""
    _require("opencc", "data.segmenter 'jieba'")
    spec = importlib.util.find_spec("opencc")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "dictionary" / "TSCharacters.txt"
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed opencc package (reinstall: pip install {OPENCC_PIP})")
    table: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        src, _, dst = line.partition("\t")
        first = dst.split(" ")[0]
        if len(src) == 1 and len(first) == 1:  # 1:1 keeps every offset
            table[ord(src)] = first
    return table


@lru_cache(maxsize=1)
def _jieba() -> Segment:
    _require("jieba", "data.segmenter 'jieba'")
    import jieba

    logging.getLogger("jieba").setLevel(logging.WARNING)  # its "Building prefix dict" lines
    tok = jieba.Tokenizer()  # an instance of its own: nobody else's user words change ours
    table = traditional_to_simplified_table()

    def segment(run: str) -> list[tuple[str, int, int]]:
        simple = run.translate(table)
        assert len(simple) == len(run)
        return [(run[a:b], a, b) for _, a, b in tok.tokenize(simple, HMM=True) if b > a]

    return segment


def segmenter(name: str | None) -> Segment | None:
    """The segmenter called `name` (None or 'none': no segmentation)."""
    if name in (None, "none"):
        return None
    if name == "jieba":
        return _jieba()
    raise UserError(f"unknown segmenter '{name}' (expected one of {', '.join(SEGMENTERS)})")
