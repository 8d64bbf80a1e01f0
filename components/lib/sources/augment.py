"""Transfer-set augmentation for languages with little unlabeled text: mention replacement (Dai &
Adel 2020, "An Analysis of Simple Data Augmentation for Named Entity Recognition"), pure.

Each train sentence that has an entity is copied `copies` times; in every copy each entity mention
is replaced by a mention of the same type drawn (seeded) from the other mentions of that type in
the same language's TRAIN split, never from dev, test or the transfer set's own sentences. The copies
go to the transfer set without tags: the teacher labels them like any unlabeled sentence, so a
replacement that reads wrong in context costs a noisy pseudo-label, not a wrong gold one. A copy
equal to a sentence already taken (train, dev, test, transfer or an earlier copy; compared on the
de-duplication key) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from components.lib.core.tokens import spans


@dataclass(frozen=True)
class Copy:
    words: list[str]
    source: int  # index of the train sentence it was made from
    copy: int  # which of its copies
    replaced: int  # mentions replaced by a different one


def mention_pool(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]) -> dict[str, list[tuple[str, ...]]]:
    """Entity type -> its distinct mentions (word tuples), in order of first appearance."""
    pool: dict[str, dict[tuple[str, ...], None]] = {}
    for words, row in zip(sentences, tags, strict=True):
        for typ, a, b in spans(row):
            pool.setdefault(typ, {})[tuple(words[a:b])] = None
    return {typ: list(m) for typ, m in pool.items()}


def mention_replacement(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]], copies: int,
                        gen: np.random.Generator, key: Callable[[list[str]], str],
                        taken: set[str]) -> tuple[list[Copy], dict[str, int]]:
    """Copies of the sentences with their mentions swapped within type; `taken` (keys already
    used) grows by every copy kept. Returns (copies, counts)."""
    pool = mention_pool(sentences, tags)
    out: list[Copy] = []
    counts = {"sentences_with_entities": 0, "made": 0, "dropped_duplicates": 0, "unchanged": 0}
    for i, (words, row) in enumerate(zip(sentences, tags, strict=True)):
        found = spans(row)
        if not found:
            continue
        counts["sentences_with_entities"] += 1
        for c in range(copies):
            new: list[str] = []
            at, replaced = 0, 0
            for typ, a, b in found:
                new.extend(words[at:a])
                choices = pool[typ]
                pick = choices[int(gen.integers(len(choices)))]
                replaced += pick != tuple(words[a:b])
                new.extend(pick)
                at = b
            new.extend(words[at:])
            if not replaced:
                counts["unchanged"] += 1
                continue
            k = key(new)
            if k in taken:
                counts["dropped_duplicates"] += 1
                continue
            taken.add(k)
            out.append(Copy(new, i, c, replaced))
            counts["made"] += 1
    counts["mention_types"] = len(pool)
    counts["mentions"] = sum(len(v) for v in pool.values())
    return out, counts
