"""seqeval entity scores, their mean over languages and the OOV share of a hand-made student
vocabulary, every figure computed by hand below."""

from __future__ import annotations

import pytest

from components.lib.core.ner_metrics import (
    by_language,
    entity_scores,
    macro_over_languages,
    oov_rates,
    tag_names,
)

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


def test_macro_over_languages_by_hand():
    # by_language above: de P = R = F1 = 1, en P = R = F1 = 1/3 -> every mean (1 + 1/3) / 2 = 2/3
    assert macro_over_languages(by_language(GOLD, PRED, ["en", "de", "en"])) == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # unweighted: a language with 1 entity counts as much as one with 100
    per = {"da": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "entities_gold": 100},
           "hr": {"precision": 0.25, "recall": 0.0, "f1": 0.0, "entities_gold": 1},
           "zh": {"precision": 0.75, "recall": 0.5, "f1": 0.6, "entities_gold": 7}}
    assert macro_over_languages(per) == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": (2 / 3 + 0.6) / 3})
    with pytest.raises(ValueError, match="no languages"):
        macro_over_languages({})


def test_oov_rates_on_a_hand_made_vocab():
    from components.lib.core.student import UNK, VocabMap

    # teacher vocab of 10: pad 0, unk 1, CLS 2, SEP 3; the student keeps pieces 2, 3, 5, 6
    vocab = VocabMap([2, 3, 5, 6], teacher_vocab_size=10, teacher_pad_id=0, teacher_unk_id=1)
    assert vocab.encode([7, 1, 5]).tolist() == [UNK, UNK, 4]
    pieces = [[2, 5, 7, 6, 3],        # da: 5 7 6 -> 1 OOV of 3 (CLS/SEP not counted)
              [2, 8, 9, 1, 3, 0, 0],  # hr: 8 9 [UNK] -> 3 of 3 (the teacher's own UNK is UNK to the student too)
              [2, 5, 5, 3],           # da: 5 5 -> 0 of 2
              [2, 3]]                 # da: no text pieces -> nothing counted
    out = oov_rates(pieces, vocab, special_ids=[2, 3, 0], langs=["da", "hr", "da", "da"])
    # da 1/5, hr 3/3, all 4/8
    assert out == {"oov_rate": 4 / 8, "oov_rate_per_language": {"da": 1 / 5, "hr": 3 / 3}}
    assert list(out["oov_rate_per_language"]) == ["da", "hr"]
    assert oov_rates(pieces, vocab, [2, 3, 0]) == {"oov_rate": 0.5}  # no languages: no per-language key
    assert oov_rates([[2, 3]], vocab, [2, 3, 0]) == {"oov_rate": 0.0}  # nothing to count: 0, not NaN
    with pytest.raises(ValueError, match="2 languages for 4 sentences"):
        oov_rates(pieces, vocab, [2, 3, 0], langs=["da", "hr"])
