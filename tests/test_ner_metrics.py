"""seqeval entity scores on a hand-made example, every figure computed by hand below."""

from __future__ import annotations

import pytest

from components.lib.ner_metrics import by_language, entity_scores, tag_names

# Gold entities (type, words): s1 PER[0,2) LOC[3,4); s2 ORG[0,1) PER[2,3); s3 LOC[1,3)  -> 5 (PER 2, LOC 2, ORG 1)
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER", "O"], ["O", "B-LOC", "I-LOC", "O"]]
# Predicted: s1 PER[0,2) ok, ORG[3,4) wrong type; s2 ORG[0,1) ok, and an I-PER after O *starts* a PER
# entity (seqeval's default, conlleval-style reading) -> PER[2,3) ok; s3 LOC[1,2) wrong boundary.
# -> 5 predicted (PER 2, ORG 2, LOC 1), 3 correct (PER 2, ORG 1).
PRED = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "I-PER", "O"], ["O", "B-LOC", "O", "O"]]


def test_entity_scores_by_hand():
    s = entity_scores(GOLD, PRED)
    # micro: precision 3/5, recall 3/5, F1 0.6
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((0.6, 0.6, 0.6))
    # PER: 2/2 predicted right, 2/2 found -> 1.0; LOC: 0 of 1 predicted right, 0 of 2 found -> 0;
    # ORG: 1 of 2 predicted right (P 0.5), 1 of 1 found (R 1) -> F1 2*0.5*1/1.5 = 2/3
    assert s["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert s["per_type"]["ORG"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert s["macro_f1"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)  # = 5/9
    # tags: 12 words, 3 differ (s1 w3 B-LOC/B-ORG, s2 w2 B-PER/I-PER, s3 w2 I-LOC/O) -> 9/12
    assert s["token_accuracy"] == 0.75
    assert (s["entities_gold"], s["entities_predicted"], s["sentences"]) == (5, 5, 3)


def test_by_language_by_hand():
    out = by_language(GOLD, PRED, ["en", "de", "en"])
    assert list(out) == ["de", "en"]
    # de = s2: ORG and PER both found exactly -> 1.0
    assert out["de"]["f1"] == 1.0 and out["de"]["entities_gold"] == 2
    # en = s1 + s3: gold PER, LOC, LOC; predicted PER (ok), ORG, LOC[1,2) -> P = R = F1 = 1/3
    assert (out["en"]["precision"], out["en"]["recall"], out["en"]["f1"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert out["en"]["token_accuracy"] == pytest.approx(6 / 8)


def test_no_entities_scores_zero_not_nan():
    # all O on both sides (e.g. a language without entities in the test split): 0, never NaN
    s = entity_scores([["O", "O"]], [["O", "O"]])
    assert (s["f1"], s["macro_f1"], s["per_type"], s["token_accuracy"]) == (0.0, 0.0, {}, 1.0)
    # one spurious entity: precision 0/1, nothing to recall
    s = entity_scores([["O", "O"]], [["B-PER", "O"]])
    assert s["f1"] == 0.0 and s["entities_predicted"] == 1 and s["per_type"]["PER"]["support"] == 0


def test_mismatched_lengths_and_tag_names():
    with pytest.raises(ValueError, match="sentence 1: 4 gold tags but 3 predicted"):
        entity_scores(GOLD, [PRED[0], PRED[1][:3], PRED[2]])
    with pytest.raises(ValueError, match="3 gold sentences but 2 predicted"):
        entity_scores(GOLD, PRED[:2])
    assert tag_names([[0, 1], [2]], ["O", "B-X", "I-X"]) == [["O", "B-X"], ["I-X"]]
