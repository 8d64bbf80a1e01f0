"""Entity-level scores for token classification (seqeval, CoNLL-style exact span match).

Pure functions over tag-name sequences: evaluate, the teacher's dev selection and the student's
early stopping all call these, so "F1" means the same thing everywhere. For the multilingual
setting: scores per language, their unweighted mean, and the student vocabulary's OOV share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def _check(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro precision/recall/F1 over entities, per entity type, macro F1, token accuracy."""
    from seqeval.metrics import classification_report

    _check(gold, pred)
    gold_l = [list(g) for g in gold]
    pred_l = [list(p) for p in pred]
    n_tokens = sum(len(g) for g in gold_l)
    correct = sum(a == b for g, p in zip(gold_l, pred_l, strict=True) for a, b in zip(g, p, strict=True))
    n_pred = sum(_count_entities(p) for p in pred_l)
    n_gold = sum(_count_entities(g) for g in gold_l)
    # No entity on either side (e.g. a language without entities): seqeval would average an empty
    # set into NaN; every score is 0 then, as seqeval gives when only one side has entities.
    rep = classification_report(gold_l, pred_l, output_dict=True, zero_division=0) if n_pred or n_gold else {}
    per_type = {
        typ: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
              "support": int(v["support"])}
        for typ, v in rep.items() if typ not in ("micro avg", "macro avg", "weighted avg")
    }
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    macro = rep.get("macro avg", {"f1-score": 0.0})
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "macro_f1": float(macro["f1-score"]),
        "entities_gold": int(micro["support"]),
        "entities_predicted": int(n_pred),
        "token_accuracy": float(correct / n_tokens) if n_tokens else 0.0,
        "sentences": len(gold_l),
        "per_type": per_type,
    }


def _count_entities(tags: Sequence[str]) -> int:
    from components.lib.core.tokens import spans

    return len(spans(tags))


def by_language(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], langs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """entity_scores per language (sorted by language code)."""
    _check(gold, pred)
    if len(langs) != len(gold):
        raise ValueError(f"{len(langs)} languages for {len(gold)} sentences")
    langs_a = np.asarray(list(langs), dtype=object)
    out = {}
    for lang in sorted(set(langs)):
        idx = np.flatnonzero(langs_a == lang)
        out[str(lang)] = entity_scores([gold[i] for i in idx], [pred[i] for i in idx])
    return out


def macro_over_languages(per_language: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Unweighted mean precision/recall/F1 over languages (by_language's output)."""
    if not per_language:
        raise ValueError("no languages to average over")
    # Every language weighs the same however many entities its test split has: a small language
    # the student fails on must show in the headline, not drown under the big ones.
    n = len(per_language)
    return {k: sum(float(m[k]) for m in per_language.values()) / n for k in ("precision", "recall", "f1")}


def oov_rates(teacher_ids: Sequence[np.ndarray], vocab: Any, special_ids: Iterable[int],
              langs: Sequence[str] | None = None) -> dict[str, Any]:
    """Share of the teacher word pieces that `vocab` (a student VocabMap) maps to UNK: `oov_rate`
    over all sentences and, with languages, `oov_rate_per_language`; special_ids are not counted."""
    from components.lib.core.student import UNK

    if langs is not None and len(langs) != len(teacher_ids):
        raise ValueError(f"{len(langs)} languages for {len(teacher_ids)} sentences")
    specials = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    counts: dict[str, list[int]] = {}  # language ("" without languages) -> [oov pieces, pieces]
    for i, ids in enumerate(teacher_ids):
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[~np.isin(ids, specials)]  # CLS/SEP/pad are not text: they would dilute the rate
        c = counts.setdefault(str(langs[i]) if langs is not None else "", [0, 0])
        c[0] += int((vocab.encode(ids) == UNK).sum())
        c[1] += len(ids)
    oov, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    out: dict[str, Any] = {"oov_rate": oov / total if total else 0.0}
    if langs is not None:
        out["oov_rate_per_language"] = {lang: c[0] / c[1] if c[1] else 0.0 for lang, c in sorted(counts.items())}
    return out


def tag_names(ids: Sequence[Sequence[int]] | Sequence[np.ndarray], label_names: Sequence[str]) -> list[list[str]]:
    """Tag ids per sentence -> tag names per sentence."""
    return [[label_names[int(t)] for t in row] for row in ids]
