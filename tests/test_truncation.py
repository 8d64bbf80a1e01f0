"""tokenize_truncated returns exactly the ids of a whole-text truncating call, for the real
packaged WordPiece tokenizer and for byte-level BPE and Metaspace tokenizers built here, and only
tokenises the head of long texts."""

from __future__ import annotations

import random

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
