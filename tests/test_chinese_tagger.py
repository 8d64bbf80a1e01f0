"""A tagger exported for Chinese serves raw text as it was trained: prepare-data's segmenter (jieba,
traditional text through OpenCC's character table) splits the served text into the same words,
so entity spans come back at the right character offsets, where the unsegmented clause would be
one word with one tag."""

from __future__ import annotations

import random

import pandas as pd

from components.export.tokens import segmenter_packages
from components.lib.core.segment import segmenter
from components.lib.core.tokens import pretokenize
from tests.helpers import build_tiny_token_student

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
PEOPLE = ["習近平", "李克強", "王小明"]
PLACES = ["北京", "美國", "上海", "日本", "東京"]
FRAMES = ["{PER}在{LOC}會見了{LOC}總統。", "{PER}昨天訪問了{LOC}。", "{LOC}和{LOC}簽署了協議。"]
HELD_OUT = "李克強在東京會見了美國總統。"  # never a training sentence


def chinese_task(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[int]], list[str]]:
    """Template sentences, split into words by the jieba segmenter, tagged from the names' character spans."""
    rng, seg = random.Random(seed), segmenter("jieba")
    sents, tags = [], []
    while len(sents) < n:
        text, spans = "", []
        for part in rng.choice(FRAMES).replace("}", "{").split("{"):
            if part in ("PER", "LOC"):
                name = rng.choice(PEOPLE if part == "PER" else PLACES)
                spans.append((part, len(text), len(text) + len(name)))
                text += name
            else:
                text += part
        if text == HELD_OUT:
            continue
        words = pretokenize(text, "words", seg)
        row = []
        for _, a, _ in words:
            typ = next(((t, s) for t, s, e in spans if s <= a < e), None)
            row.append(0 if typ is None else NAMES.index(f"{'B' if typ[1] == a else 'I'}-{typ[0]}"))
        sents.append([w for w, _, _ in words])
        tags.append(row)
    return sents, tags, NAMES


def test_exported_chinese_tagger_gives_entity_spans_at_character_offsets(tiny_bert_dir, tmp_path):
    from components.lib.models.student_io import load_student
    from components.lib.publish.onnx import export_onnx
    from components.lib.publish.pyfunc import StudentTokenTagger
    from components.lib.publish.registry import pyfunc_bundle

    student_dir = build_tiny_token_student(tmp_path / "zh-student", tiny_bert_dir, steps=150, task=chinese_task(200))
    st = load_student(student_dir)
    onnx = export_onnx(st, tmp_path / "model.onnx", 17)
    bundle = pyfunc_bundle(student_dir, onnx, st, tmp_path / "student",
                           {"task": "token-classification", "pretokenizer": "words", "segmenter": "jieba"})
    assert segmenter_packages(bundle) == ("jieba", "opencc-python-reimplemented")  # pinned for the serving image
    model = StudentTokenTagger()
    model._load(bundle)
    out = model.predict(None, pd.DataFrame({"text": [HELD_OUT]}))
    got = [(e["entity"], e["text"], e["start"], e["end"]) for e in out["entities"][0]]
    assert got == [("PER", "李克強", 0, 3), ("LOC", "東京", 4, 6), ("LOC", "美國", 9, 11)]
    assert out["tags"][0] == ["B-PER", "O", "B-LOC", "O", "O", "B-LOC", "O", "O"]
    # the same model without the segmenter sees one 13-character word: it cannot give those spans
    plain = pyfunc_bundle(student_dir, onnx, st, tmp_path / "plain", {"task": "token-classification", "pretokenizer": "words"})
    assert segmenter_packages(plain) == ()
    unsegmented = StudentTokenTagger()
    unsegmented._load(plain)
    ents = unsegmented.predict(None, [HELD_OUT])["entities"][0]
    assert [(e["start"], e["end"]) for e in ents] != [(0, 3), (4, 6), (9, 11)] and len(ents) <= 1
