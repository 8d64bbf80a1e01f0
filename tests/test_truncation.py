"""tokenize_truncated returns exactly the ids of a whole-text truncating call, for the real
packaged WordPiece tokenizer and for byte-level BPE and Metaspace tokenizers built here, and only
tokenises the head of long texts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.lib.core.truncation import CHARS_PER_PIECE, head, tokenize_truncated


def _texts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "film", "was", "surprisingly", "good", "Überraschung", "naïve", "don't", "e-mail", "2026",
             "...", "(great)", "東京", "пример", "supercalifragilisticexpialidocious", "a", "I", "!"]
    seps = [" ", " ", " ", "  ", "\n", "\t", " \n "]
    out = []
    for n in (0, 1, 3, 10, 40, 120, 400, 1500):
        out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(n)).strip())
    out.append("x" * 3000)  # no whitespace at all: tokenised whole
    out.append(" ".join(["Pneumonoultramicroscopicsilicovolcanoconiosis"] * 200))  # long words: the head falls short
    out.append("word " * 2000 + "end")
    return out


def _bert(packaged_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(packaged_teacher_dir))


def _trained(kind: str):
    """A small fast tokenizer of another family, trained on the test texts themselves."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte-bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-style: Metaspace + unigram
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        alphabet = []
    trainer = (trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], initial_alphabet=alphabet)
               if kind == "byte-bpe" else
               trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], unk_token="<unk>"))
    tok.train_from_iterator(_texts(1), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("kind", ["wordpiece", "byte-bpe", "metaspace-unigram"])
@pytest.mark.parametrize("max_length", [8, 64, 128])
def test_same_ids_as_the_whole_text_call(kind, max_length, packaged_teacher_dir):
    tok = _bert(packaged_teacher_dir) if kind == "wordpiece" else _trained(kind)
    texts = _texts(0)
    kwargs = {"add_special_tokens": True, "return_attention_mask": True}
    want = tok(texts, truncation=True, max_length=max_length, **kwargs)
    got = tokenize_truncated(tok, texts, max_length, **kwargs)
    assert set(got.keys()) == set(want.keys())
    for key in want:
        assert got[key] == want[key], key


def test_only_the_head_is_tokenised_and_short_heads_are_redone(packaged_teacher_dir):
    tok = _bert(packaged_teacher_dir)
    seen: list[list[str]] = []

    class Spy:
        def __call__(self, texts, **kwargs):
            seen.append(list(texts))
            return tok(texts, **kwargs)

    ordinary = "the film was good " * 500  # 2,000 words
    long_words = " ".join(["international"] * 200)  # 13 characters, one piece: 256 chars hold 18 pieces
    enc = tokenize_truncated(Spy(), [ordinary, long_words, "short"], 32)
    budget = CHARS_PER_PIECE * 32
    assert [len(t) <= budget for t in seen[0]] == [True, True, True]  # first pass: heads only
    assert seen[1] == [long_words] and len(seen) == 2  # fewer than 32 pieces in the head: redone whole
    assert [len(ids) for ids in enc["input_ids"]] == [32, 32, 3]


def test_head_cuts_at_whitespace():
    assert head("short text", 100) == "short text"
    assert head("aaa bbb ccc", 6) == "aaa"
    assert head("aaa bbb ccc", 7) == "aaa bbb"  # text[7] is the space after bbb
    assert head("aaa\tbbb\nccc", 9) == "aaa\tbbb"
    assert head("x" * 50, 10) == "x" * 50  # nowhere to cut: the whole text


def _naive_head_tail(tok, text: str, max_length: int, keep_tail: int) -> list[int]:
    """Tokenise the whole text, keep the first max_length - specials - keep_tail pieces and the last keep_tail."""
    full = tok(text, add_special_tokens=True)["input_ids"]
    inner = tok(text, add_special_tokens=False)["input_ids"]
    p = next(i for i in range(len(full) + 1) if full[i:i + len(inner)] == inner)
    before, after = full[:p], full[p + len(inner):]
    room = max_length - len(before) - len(after)
    kept = inner if len(inner) <= room else inner[: room - keep_tail] + inner[len(inner) - keep_tail:]
    return before + kept + after


@pytest.mark.parametrize("kind", ["wordpiece", "byte-bpe", "metaspace-unigram"])
@pytest.mark.parametrize("max_length, keep_tail", [(8, 3), (64, 32), (128, 96)])
def test_head_tail_keeps_the_first_and_last_pieces_of_long_texts(kind, max_length, keep_tail, packaged_teacher_dir):
    tok = _bert(packaged_teacher_dir) if kind == "wordpiece" else _trained(kind)
    texts = _texts(0) + ["begin " + "middle " * 400 + "finale"]
    got = tokenize_truncated(tok, texts, max_length, keep_tail=keep_tail, add_special_tokens=True, return_attention_mask=True)
    want = [_naive_head_tail(tok, t, max_length, keep_tail) for t in texts]
    assert got["input_ids"] == want
    assert got["attention_mask"] == [[1] * len(w) for w in want]
    plain = tokenize_truncated(tok, texts, max_length)["input_ids"]
    for t, a, b in zip(texts, got["input_ids"], plain, strict=True):
        assert len(a) == len(b) <= max_length  # same length: only which pieces differ
        if len(tok(t, add_special_tokens=True)["input_ids"]) <= max_length:
            assert a == b  # short texts are untouched


def test_tail_cuts_at_whitespace():
    from components.lib.core.truncation import tail

    assert tail("short text", 100) == "short text"
    assert tail("aaa bbb ccc", 6) == "ccc"
    assert tail("aaa bbb ccc", 7) == "bbb ccc"
    assert tail("x" * 50, 10) == "x" * 50


def test_teacher_scores_the_head_tail_cut(packaged_teacher_dir, tiny_bert_dir):
    """teacher.score with keep_tail sees the pieces tokenize_truncated(keep_tail) gives: a text whose
    label word is only in its tail is scored differently from the head cut, and equal to scoring
    the head+tail text spelled out."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from components.lib.models import teacher

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()
    long = "the start " + "filler words " * 100 + "and a terrible ending"
    short = "the start was fine"
    head_only, _ = teacher.score(model, tok, [long, short], 32, 2)
    head_tail, _ = teacher.score(model, tok, [long, short], 32, 2, keep_tail=8)
    ids = tokenize_truncated(tok, [long], 32, keep_tail=8)["input_ids"][0]
    spelled = tok.decode(ids[1:-1])
    direct, _ = teacher.score(model, tok, [spelled], 64, 2)
    assert not np.allclose(head_only[0], head_tail[0])  # the tail changes what the teacher sees
    assert np.allclose(head_only[1], head_tail[1])  # a short text is the same either way
    assert np.allclose(head_tail[0], direct[0], atol=1e-5)
    assert spelled.endswith("and a terrible ending") and spelled.startswith("the start filler")
    assert "terrible" not in tok.decode(tokenize_truncated(tok, [long], 32)["input_ids"][0])


def test_keep_tail_is_refused_where_it_cannot_apply():
    from components.lib.settings.config import validate_config

    with pytest.raises(Exception, match="teacher.keep_tail applies to sequence classification"):
        validate_config({"task": "token-classification", "teacher": {"keep_tail": 16}})
    with pytest.raises(Exception, match=r"teacher.keep_tail \(125\) must leave a head: at most max_length - 8 = 120"):
        validate_config({"teacher": {"keep_tail": 125}})
    cfg = validate_config({"teacher": {"keep_tail": 64}})
    assert cfg.transfer_keep_tail == 64 and validate_config({"teacher": {"keep_tail": 64}, "transfer": {"keep_tail": 0}}).transfer_keep_tail == 0
