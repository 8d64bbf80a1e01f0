"""Words, word pieces and tags (components/lib/core/tokens.py) with the real MiniLM WordPiece tokenizer:
the one alignment rule every token-classification step relies on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from components.lib.contracts import data, token_data
from components.lib.core import decode, tokens
from components.lib.core.errors import DataError, UserError


@pytest.fixture(scope="module")
def tok(packaged_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_teacher_dir)


SENTENCES = [
    ["Empire", "State", "Building", "=", "ESB", "unbelievably"],
    ["@paulwalk", "It", "'s", "the", "view"],
    ["hi"],
]
TAGS = [[1, 2, 2, 0, 1, 0], [3, 0, 0, 0, 0], [0]]


def test_first_piece_of_every_word(tok):
    enc = tokens.encode_words(tok, SENTENCES, max_length=64)
    for words, ids, first in zip(SENTENCES, enc.input_ids, enc.first_piece, strict=True):
        pieces = tok.convert_ids_to_tokens(ids.tolist())
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(first) == len(words)
        assert np.all(np.diff(first) > 0)  # strictly increasing: one first piece per word, in order
        for w, pos in zip(words, first, strict=True):
            # the word's own pieces start at its first piece and re-join to the (lower-cased) word
            piece = pieces[pos]
            assert not piece.startswith("##") and w.lower().startswith(piece)
    assert tok.convert_ids_to_tokens(enc.input_ids[0].tolist())[5:8] == ["es", "##b", "un"]  # ESB -> es ##b


def test_labels_on_first_pieces_round_trip(tok):
    enc = tokens.encode_words(tok, SENTENCES, max_length=64)
    for tags, ids, first in zip(TAGS, enc.input_ids, enc.first_piece, strict=True):
        labels = tokens.piece_labels(first, tags, len(ids))
        # every other piece (specials, continuation pieces) is ignored by the loss
        assert (labels != tokens.IGNORE_INDEX).sum() == len(tags)
        assert labels[0] == labels[-1] == tokens.IGNORE_INDEX
        # reading the per-piece labels back at the first pieces gives the word tags again
        assert tokens.gather_words(labels, first).tolist() == tags


def test_truncation_cuts_whole_words_and_they_become_outside(tok):
    enc = tokens.encode_words(tok, SENTENCES[:1], max_length=7)  # [CLS] + 5 pieces + [SEP]
    first = enc.first_piece[0]
    # ESB keeps its first piece (es, not ##b), so it still carries its label; the next word is cut
    assert enc.covered(0) == 5 and first[5:].tolist() == [-1]
    labels = tokens.piece_labels(first, TAGS[0], len(enc.input_ids[0]))
    assert tokens.gather_words(labels, first).tolist() == TAGS[0][:5]
    pred = decode.fill_uncovered(np.array([1, 2, 2, 0]), n_words=6, outside=0)
    assert pred.tolist() == [1, 2, 2, 0, 0, 0]


def test_word_without_pieces_shares_the_previous_piece_and_never_steals_its_label(tok):
    words = ["New", "\u200b", "York"]  # the zero-width space produces no word piece
    enc = tokens.encode_words(tok, [words], max_length=32)
    first = enc.first_piece[0]
    assert first[1] == first[0] and enc.covered(0) == 3
    labels = tokens.piece_labels(first, [5, 0, 6], len(enc.input_ids[0]))
    assert labels[first[0]] == 5 and labels[first[2]] == 6


@pytest.mark.parametrize(("tags", "want"), [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["I-PER", "I-PER", "B-PER"], [("PER", 0, 2), ("PER", 2, 3)]),  # IOB1-style start, then a new one
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a type change starts an entity
    (["S-ORG", "B-LOC", "E-LOC", "O"], [("ORG", 0, 1), ("LOC", 1, 3)]),  # IOBES
    (["O", "O"], []),
])
def test_spans(tags, want):
    assert tokens.spans(tags) == want


def test_spans_agree_with_seqeval_entities():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = np.random.default_rng(0)
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(200):
        seq = [names[i] for i in rng.integers(0, len(names), size=rng.integers(1, 12))]
        ours = [(t, s, e - 1) for t, s, e in tokens.spans(seq)]
        assert ours == get_entities(seq), seq


def test_pretokenize_offsets_point_at_the_words():
    text = "I'm at the Empire-State Building, NYC!!  ok"
    for mode in ("words", "whitespace"):
        words = tokens.pretokenize(text, mode)
        assert all(text[s:e] == w for w, s, e in words)
    assert [w for w, _, _ in tokens.pretokenize(text, "words")][3:6] == ["Empire-State", "Building", ","]
    assert [w for w, _, _ in tokens.pretokenize("NYC!!", "words")] == ["NYC", "!", "!"]
    assert [w for w, _, _ in tokens.pretokenize("NYC!! ok", "whitespace")] == ["NYC!!", "ok"]
    with pytest.raises(UserError, match="pretokenizer"):
        tokens.pretokenize("x", "spaces")


def test_token_contract_rejects_misaligned_rows(tmp_path):
    with pytest.raises(DataError, match=r"column 'tags' row 1 \(id 'b'\) has 1 entries for 2 tokens"):
        token_data.token_labeled_table(["a", "b"], [["x"], ["y", "z"]], [[0], [0]], ["O", "B-X"])
    with pytest.raises(DataError, match="column 'tags' has value 2 outside 0..1"):
        token_data.token_labeled_table(["a"], [["x"]], [[2]], ["O", "B-X"])
    with pytest.raises(DataError, match="empty or whitespace-only words"):
        token_data.token_transfer_table(["a"], [["x", " "]])
    path = tmp_path / "bad.parquet"
    data.write_table(pa.table({"id": ["a"], "tokens": ["not a list"]}), path)
    with pytest.raises(DataError, match=f"{path}: column 'tokens' has type string"):
        token_data.read_token_transfer(path)


def test_ragged_round_trip_through_parquet(tmp_path):
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(n, 3)).astype(np.float32) for n in (2, 5, 1)]
    reprs = [rng.normal(size=(n, 4)) for n in (2, 5, 1)]
    words = [[f"w{i}" for i in range(len(x))] for x in logits]
    table = token_data.token_pseudo_table(["a", "b", "c"], words, logits, reprs, {"teacher": "t"})
    data.write_table(table, tmp_path / "p.parquet", row_group_rows=2)
    back, meta = token_data.read_token_pseudo(tmp_path / "p.parquet")
    assert meta["num_labels"] == 3 and meta["repr_dim"] == 4
    values, offsets = token_data.ragged_to_numpy(back.slice(1).column("teacher_logits"))
    assert offsets.tolist() == [0, 5, 6]
    np.testing.assert_array_equal(values, np.concatenate(logits[1:]))
    tags, _ = token_data.ragged_to_numpy(back.column("teacher_tags"), np.int64)
    assert tags.tolist() == np.concatenate([x.argmax(1) for x in logits]).tolist()
    r, _ = token_data.ragged_to_numpy(back.column("teacher_repr"))
    np.testing.assert_allclose(r, np.concatenate(reprs).astype(np.float16).astype(np.float32))


def test_argmax_decoding_is_the_best_tag_of_each_covered_word_and_o_past_the_cut():
    names = ["B-PER", "I-PER", "O"]
    logits = [np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]]), np.zeros((0, 3))]  # 2 of 3 words covered; none
    want = [["B-PER", "I-PER", "O"], ["O", "O"]]
    assert decode.decode_tags(logits, [3, 2], names, "argmax") == want
    assert decode.decode_tags(logits, [3, 2], names, "constrained") == want  # already a valid sequence
    assert decode.outside_index(["B-X", "o"]) == 1 and decode.outside_index(["B-X"]) == 0
    with pytest.raises(ValueError, match="unknown decoding 'crf'"):
        decode.decoder(names, "crf")


# ---------------------------------------------------------------- constrained decoding

IOB2 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
IOBES = ["O"] + [f"{p}-{t}" for t in ("PER", "LOC") for p in "BIES"]
BILOU = ["O"] + [f"{p}-{t}" for t in ("PER", "LOC") for p in "BILU"]


def _probs(*rows: list[float]) -> np.ndarray:
    """Logits whose softmax is exactly these rows (log of probabilities that sum to 1)."""
    return np.log(np.array(rows, dtype=np.float64))


def test_constrained_fixes_o_then_i_as_the_scores_imply():
    names = ["O", "B-PER", "I-PER"]
    # argmax: O I-PER. Allowed paths and their probabilities: B I 0.4*0.7=0.28 > O O 0.5*0.2=0.10 > B O 0.08
    lg = _probs([0.5, 0.4, 0.1], [0.2, 0.1, 0.7])
    assert decode.decode_tags([lg], [2], names, "argmax") == [["O", "I-PER"]]
    assert decode.decode_tags([lg], [2], names, "constrained") == [["B-PER", "I-PER"]]
    # a weak B-PER: O O 0.8*0.3=0.24 > O B 0.08 > B I 0.1*0.6=0.06
    lg = _probs([0.8, 0.1, 0.1], [0.3, 0.1, 0.6])
    assert decode.decode_tags([lg], [2], names, "constrained") == [["O", "O"]]
    # I-PER cannot start a sentence: of the allowed tags B-PER 0.35 > O 0.05
    lg = _probs([0.05, 0.35, 0.6])
    assert decode.decode_tags([lg], [1], names, "constrained") == [["B-PER"]]
    # I-LOC after B-PER: another type does not continue it; B-PER B-LOC 0.5*0.3 > B-PER I-PER 0.5*0.2 > B-LOC I-LOC 0.04
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    lg = _probs([0.1, 0.5, 0.2, 0.1, 0.1], [0.05, 0.05, 0.2, 0.3, 0.4])
    assert decode.decode_tags([lg], [2], names, "argmax") == [["B-PER", "I-LOC"]]
    assert decode.decode_tags([lg], [2], names, "constrained") == [["B-PER", "B-LOC"]]
    assert decode.invalid_transitions([["B-PER", "I-LOC"], ["I-PER"], ["O", "I-PER", "I-PER"]], names) == 3


def test_iobes_closes_entities_also_before_the_cut():
    # argmax B-PER alone: an entity left open. Best closed tag: S-PER 0.25 > O 0.15
    lg = _probs([0.15, 0.5, 0.05, 0.05, 0.25])
    names = IOBES[:5]  # O B-PER I-PER E-PER S-PER
    assert decode.decode_tags([lg], [1], names, "argmax") == [["B-PER"]]
    assert decode.decode_tags([lg], [1], names, "constrained") == [["S-PER"]]
    # cut off after the first word: the O that follows must not follow an open B-PER either
    assert decode.decode_tags([lg], [3], names, "constrained") == [["S-PER", "O", "O"]]
    # argmax B-PER I-PER ends inside the entity; the best closed pair is B-PER E-PER 0.6*0.35 (S-PER O 0.01, O O 0.01)
    lg = _probs([0.1, 0.6, 0.1, 0.1, 0.1], [0.1, 0.05, 0.45, 0.35, 0.05])
    assert decode.decode_tags([lg], [2], names, "argmax") == [["B-PER", "I-PER"]]
    assert decode.decode_tags([lg], [2], names, "constrained") == [["B-PER", "E-PER"]]


def _valid_path(rng, allowed, n: int) -> np.ndarray:
    start, trans, end = allowed
    while True:  # a random walk over allowed transitions, kept when it may end
        path = [rng.choice(np.flatnonzero(start == 0))]
        for _ in range(n - 1):
            path.append(rng.choice(np.flatnonzero(trans[path[-1]] == 0)))
        if end[path[-1]] == 0:
            return np.array(path)


@pytest.mark.parametrize("names", [IOB2, IOBES, BILOU], ids=["iob2", "iobes", "bilou"])
def test_constrained_never_emits_a_forbidden_transition_and_equals_a_valid_argmax(names):
    rng = np.random.default_rng(0)
    allowed = decode.allowed_transitions(names)
    invalid_argmax = 0
    for _ in range(400):
        n = int(rng.integers(1, 25))
        n_words = n + int(rng.integers(0, 3))  # some sentences run past max_length
        lg = rng.normal(0, 3, (n, len(names))).astype(np.float32)
        tags = decode.decode_tags([lg], [n_words], names, "constrained")
        assert len(tags[0]) == n_words and decode.invalid_transitions(tags, names) == 0, tags
        argmax = decode.decode_tags([lg], [n_words], names, "argmax")
        invalid_argmax += decode.invalid_transitions(argmax, names) > 0
        if decode.invalid_transitions(argmax, names) == 0:
            assert tags == argmax
        # logits whose argmax is a valid sequence: constrained decoding leaves it as it is
        path = _valid_path(rng, allowed, n)
        lg[np.arange(n), path] = lg.max(axis=1) + rng.uniform(0.01, 1.0, n)
        assert decode.decode_tags([lg], [n], names, "constrained") == [[names[k] for k in path]]
        assert decode.viterbi(decode.log_softmax(lg), *allowed)[0].tolist() == path.tolist()  # not only the shortcut
    assert invalid_argmax > 100  # random logits break the scheme often, so the property was exercised


@pytest.mark.parametrize("names", [IOB2[:5], IOBES[:5]], ids=["iob2", "iobes"])
def test_viterbi_finds_the_best_allowed_sequence(names):
    """Against brute force over every sequence of up to 4 words: the decoded one has the highest
    log-softmax score among the allowed ones."""
    import itertools

    rng = np.random.default_rng(1)
    start, trans, end = decode.allowed_transitions(names)
    for _ in range(60):
        n = int(rng.integers(1, 5))
        lg = rng.normal(0, 2, (n, len(names)))
        em = decode.log_softmax(lg)
        best = max((start[p[0]] + end[p[-1]] + sum(trans[a, b] for a, b in itertools.pairwise(p)) + em[np.arange(n), p].sum(), p)
                   for p in itertools.product(range(len(names)), repeat=n))
        got = decode.decoder(names, "constrained")(lg, n)
        assert np.isfinite(best[0]) and em[np.arange(n), got].sum() == pytest.approx(best[0])


@pytest.mark.parametrize("names", [["O"], ["O", "PER", "LOC"], ["O", "B-PER", "I-PER", "MISC"]], ids=["o", "plain", "mixed"])
def test_tag_sets_without_a_scheme_decode_by_argmax(names):
    rng = np.random.default_rng(2)
    assert decode.allowed_transitions(names) is None
    logits = [rng.normal(0, 3, (int(rng.integers(0, 12)), len(names))) for _ in range(50)]
    n_words = [len(x) + 1 for x in logits]
    assert decode.decode_tags(logits, n_words, names, "constrained") == decode.decode_tags(logits, n_words, names, "argmax")
    assert decode.invalid_transitions(decode.decode_tags(logits, n_words, names, "argmax"), names) == 0
