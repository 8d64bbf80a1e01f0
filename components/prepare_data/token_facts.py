"""What prepare-data for token classification does to tags and records about reading, before the
tag space is built (tokens.py): data.label_map applied to raw tags, and the data card's `read`
entry (sentences, words and dropped empty-word lines of every file, per language).
"""

from __future__ import annotations

import re

import numpy as np

from components.lib.core.errors import DataError, UserError
from components.lib.sources.token_ingest import RawSentences

IOB_TAG = re.compile(r"^(O|[BIESLU][-_]\S+)$")  # IOB1/IOB2, IOBES and BILOU tags
READ_KEYS = ("sentences", "words", "dropped_empty_words", "dropped_lines", "layout")


def map_tags(raws: list[RawSentences], label_map: dict[str, str], label_names: list[str] | None) -> dict[str, int]:
    """data.label_map for tags: each raw tag (a name, or an index into the source's tag names) in
    the map becomes its value, the others stay as they are (B-DATE: O, I-DATE: O drops one entity
    type); returns how many tags each entry changed. The sources' own tag names are dropped, so
    the tag names come from data.label_names or the mapped tags."""
    for raw, name in label_map.items():
        if not IOB_TAG.match(name) and name not in (label_names or []):
            raise UserError(f"config key 'data.label_map': '{raw}' maps to '{name}', outside the IOB scheme "
                            "(O, or B-/I-/E-/S-/L-/U- and a type)")
    counts = dict.fromkeys(label_map, 0)
    for s in raws:
        own = s.tag_names
        out = []
        for i, row in enumerate(s.tags or []):
            new = []
            for j, tag in enumerate(row):
                if own is not None and isinstance(tag, int | np.integer) and not isinstance(tag, bool):
                    if not 0 <= tag < len(own):
                        raise DataError(f"{s.at(i, j)}: tag {int(tag)} outside 0..{len(own) - 1} (tag names {own})")
                    tag = own[tag]
                key = str(tag)
                if key in label_map:
                    counts[key] += 1
                    tag = label_map[key]
                new.append(tag)
            out.append(new)
        s.tags, s.tag_names = out, None
    return counts


def _facts(s: RawSentences) -> dict:
    if "sentences" in s.provenance and "words" in s.provenance:  # a CoNLL file: what the reader counted
        return {k: s.provenance[k] for k in READ_KEYS if k in s.provenance}
    return {"sentences": len(s.words), "words": sum(map(len, s.words))}


def read_facts(trains: list[RawSentences], tests: list[RawSentences], by_lang: bool) -> dict:
    """{lang: {train, test}} with data.languages, else {train, test}: each file's sentences and
    words as read, the empty-word lines dropped (count, the first few file:line) and its layout."""
    out: dict = {}
    for role, raws in (("train", trains), ("test", tests)):
        for s in raws:
            if by_lang:
                out.setdefault(s.provenance["lang"], {})[role] = _facts(s)
            else:
                out[role] = _facts(s)
    return out
