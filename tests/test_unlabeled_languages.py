"""Each language's own unlabeled text (data.languages[*].unlabeled): files, folders, globs and
tables end in the transfer set with their `lang`, are checked against every test split, capped per
language; their faults are one line naming the entry and the file. Mention-replacement augmentation
is seeded, comes from train only and never repeats a dev or test sentence. Chinese raw text is
split into words by jieba (traditional text through OpenCC's character table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components import prepare_data
from components.lib.contracts import token_data
from components.lib.core.errors import DataError, UserError
from components.lib.core.segment import segmenter
from components.lib.core.tokens import pretokenize
from components.lib.settings.config import PROJECT_ROOT, validate_config
from components.lib.sources.augment import mention_pool, mention_replacement
from tests.helpers import language_sources, write_uner_like

CONLLU = {"format": "conll", "conll_token_field": 1, "conll_tag_field": 2, "conll_comments": True, "conll_delimiter": "tab"}


def config(tmp_path: Path, languages: list[dict], out: str = "out", **data_keys):
    return validate_config({
        "task": "token-classification", "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
        "data": {"languages": languages, "train_sentences": 15, "dev_sentences": 5, "output_dir": str(tmp_path / out),
                 **CONLLU, **data_keys},
    })


def transfer_of(result) -> tuple[list[str], list[list[str]], list[str]]:
    t = token_data.read_token_transfer(Path(result.data_dir) / "transfer.parquet")
    return t.column("id").to_pylist(), t.column("tokens").to_pylist(), t.column("lang").to_pylist()


def card_of(result) -> dict:
    return json.loads((Path(result.data_dir) / "data_card.json").read_text())


def test_unlabeled_files_folders_globs_and_tables_end_in_transfer_with_their_lang(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    (tmp_path / "aa").mkdir()
    (tmp_path / "aa" / "one.txt").write_text("aa first raw sentence , here\n\naa second one\n", encoding="utf-8")
    (tmp_path / "aa" / "two.txt").write_text("aa third line\n", encoding="utf-8")
    (tmp_path / "aa" / "notes.md").write_text("not read: unknown suffix\n")
    (tmp_path / "bb.jsonl").write_text("".join(json.dumps({"text": f"bb table row {i}"}) + "\n" for i in range(4)))
    langs = language_sources(root)
    langs[0]["unlabeled"] = str(tmp_path / "aa")  # a folder (one spec, not a list)
    langs[1]["unlabeled"] = [str(tmp_path / "bb.jsonl"), str(tmp_path / "aa" / "t*.txt")]  # a table and a glob
    result = prepare_data.run(config(tmp_path, langs))
    ids, words, lang = transfer_of(result)
    by_id = dict(zip(ids, zip(words, lang, strict=True), strict=True))
    assert by_id["aa/unsup/0/0"] == (["aa", "first", "raw", "sentence", ",", "here"], "aa")
    assert by_id["aa/unsup/1/0"] == (["aa", "third", "line"], "aa")
    assert by_id["bb/unsup/0/3"] == (["bb", "table", "row", "3"], "bb")
    # the glob's match repeats aa's sentence: one copy stays (de-duplicated across languages)
    assert sum(1 for w, _ in by_id.values() if w == ["aa", "third", "line"]) == 1
    assert len([i for i in ids if "/unsup/" in i]) == 3 + 4
    card = card_of(result)
    files = card["sources"]["unlabeled_per_language"]["aa"]["files"]
    assert [Path(f["path"]).name for f in files] == ["one.txt", "two.txt"] and files[0]["sentences"] == 2
    assert card["transfer"]["from_unlabeled"] == 7 and card["removed"]["duplicates"]["unlabeled"] == 1


def test_a_test_sentence_planted_in_an_unlabeled_file_is_dropped(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    first = prepare_data.run(config(tmp_path, language_sources(root), "plain"))
    test = token_data.read_token_labeled(Path(first.data_dir) / "test.parquet").table
    planted = " ".join(test.column("tokens").to_pylist()[0])  # a sentence of language aa's test split
    (tmp_path / "cc.txt").write_text(f"cc some new text\n{planted.upper()}\n", encoding="utf-8")
    langs = language_sources(root)
    langs[2]["unlabeled"] = [str(tmp_path / "cc.txt")]  # another language's file: checked against every test split
    result = prepare_data.run(config(tmp_path, langs))
    _, words, _ = transfer_of(result)
    assert ["cc", "some", "new", "text"] in words
    assert not [w for w in words if " ".join(w).casefold() == planted.casefold()]
    assert card_of(result)["removed"]["overlap_with_test"]["unlabeled"] == 1


def test_per_language_fraction_and_cap_are_seeded(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    (tmp_path / "aa.txt").write_text("".join(f"aa unlabeled sentence {i}\n" for i in range(100)), encoding="utf-8")
    langs = language_sources(root)
    langs[0].update(unlabeled=[str(tmp_path / "aa.txt")], unlabeled_fraction=0.5, max_unlabeled_rows=30)
    a = prepare_data.run(config(tmp_path, langs, "a"))
    b = prepare_data.run(config(tmp_path, langs, "b"))
    ids_a = [i for i in transfer_of(a)[0] if "/unsup/" in i]
    assert len(ids_a) == 30 and sorted(ids_a) == sorted(i for i in transfer_of(b)[0] if "/unsup/" in i)
    assert card_of(a)["transfer"]["capped"] == 70


@pytest.mark.parametrize("case, message", [
    ("missing", r"missing\.txt: file not found \(data\.languages entry 'bb', unlabeled\)"),
    ("empty", r"empty\.txt: empty, no sentences \(data\.languages entry 'bb', unlabeled\)"),
    ("latin1", r"latin1\.txt:2: not UTF-8 \(byte 19: b'\\xe9'\); re-encode the file as UTF-8 \(data\.languages entry 'bb', unlabeled\)"),
    ("column", r"wrong\.jsonl \(data\.languages entry 'bb', unlabeled\): column 'tokens' missing"),
    ("nothing", r"no unlabeled files found"),
])
def test_bad_unlabeled_sources_are_one_line_naming_the_entry_and_file(tmp_path, case, message):
    root = write_uner_like(tmp_path / "uner")
    files = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt",
             "column": tmp_path / "wrong.jsonl", "nothing": tmp_path / "none" / "*.txt"}
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("bb fine line\nbb caf\u00e9 au lait\n".encode("latin-1"))
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"sentence": "bb x"}) + "\n")
    langs = language_sources(root)
    langs[1]["unlabeled"] = [str(files[case])]
    with pytest.raises((DataError, UserError), match=message) as err:
        prepare_data.run(config(tmp_path, langs))
    assert "\n" not in str(err.value)
    if case == "latin1":
        assert "bb" in str(err.value) and "latin1.txt" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_unlabeled_source_exits_2_from_the_command_line(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    langs = language_sources(root)
    langs[0]["unlabeled"] = [str(tmp_path / "gone.txt")]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"task": "token-classification", "work_dir": str(tmp_path / "w"), "tracking": {"enabled": False},
                               "data": {"languages": langs, "train_sentences": 15, "dev_sentences": 5, **CONLLU}}))
    proc = subprocess.run([sys.executable, "-m", "components.prepare_data", "--config", str(cfg)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "gone.txt: file not found (data.languages entry 'aa', unlabeled)" in last
    assert not (tmp_path / "w" / "data").exists()


# ---------------------------------------------------------------- augmentation

def test_mention_replacement_swaps_mentions_within_type_from_the_given_sentences():
    import numpy as np

    sents = [["alice", "met", "bob", "smith", "in", "paris"], ["carol", "flew", "to", "tokyo"], ["nothing", "here"]]
    tags = [["B-PER", "O", "B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-LOC"], ["O", "O"]]
    pool = mention_pool(sents, tags)
    assert pool == {"PER": [("alice",), ("bob", "smith"), ("carol",)], "LOC": [("paris",), ("tokyo",)]}
    key = lambda w: "".join(w).casefold()  # noqa: E731
    made, counts = mention_replacement(sents, tags, 4, np.random.default_rng(3), key, {key(s) for s in sents})
    again, _ = mention_replacement(sents, tags, 4, np.random.default_rng(3), key, {key(s) for s in sents})
    assert [c.words for c in made] == [c.words for c in again]  # deterministic for a seed
    assert counts["sentences_with_entities"] == 2 and counts["made"] == len(made) > 0
    names = {w for m in pool["PER"] + pool["LOC"] for w in m}
    for c in made:
        assert key(c.words) not in {key(s) for s in sents} and c.replaced >= 1
        frame = [w for w in c.words if w not in names]  # the non-entity words stay in place
        assert frame == [w for w in sents[c.source] if w not in names]
    assert len({key(c.words) for c in made}) == len(made)  # never the same copy twice


def test_augmented_copies_come_from_train_and_never_repeat_dev_or_test(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    langs = language_sources(root)
    langs[1]["augment_copies"] = 6
    a = prepare_data.run(config(tmp_path, langs, "a"))
    b = prepare_data.run(config(tmp_path, langs, "b"))
    out = Path(a.data_dir)
    assert (out / "transfer.parquet").read_bytes() == (Path(b.data_dir) / "transfer.parquet").read_bytes()
    ids, words, lang = transfer_of(a)
    made = [(i, w, g) for i, w, g in zip(ids, words, lang, strict=True) if "/aug/" in i]
    card = card_of(a)
    assert len(made) == card["augmentation"]["bb"]["made"] == card["transfer"]["from_augmentation"] > 0
    train_ids = set(token_data.read_token_labeled(out / "train.parquet").table.column("id").to_pylist())
    assert all(g == "bb" and i.split("/aug/")[1].rsplit("/", 1)[0] in train_ids for i, _, g in made)  # from train only
    key = lambda w: "".join(w).casefold()  # noqa: E731
    held = {key(w) for s in ("dev", "test", "train") for w in token_data.read_token_labeled(out / f"{s}.parquet").table.column("tokens").to_pylist()}
    assert not {key(w) for _, w, _ in made} & held
    assert card["checks"]["transfer_in_test"] == 0 and card["augmentation"]["bb"]["from"] == "train"


# ---------------------------------------------------------------- segmentation

def test_jieba_splits_chinese_runs_traditional_and_simplified_with_offsets():
    seg = segmenter("jieba")
    for text in ("習近平在北京會見了美國總統。", "习近平在北京会见了美国总统。"):
        words = pretokenize(text, "words", seg)
        assert [w for w, _, _ in words] == [text[0:3], text[3], text[4:6], text[6:8], text[8], text[9:11], text[11:13], "。"]
        assert all(text[a:b] == w for w, a, b in words)
    assert [w for w, _, _ in pretokenize("習近平在北京會見了美國總統。")] == ["習近平在北京會見了美國總統", "。"]  # without a segmenter
    mixed = pretokenize("Obama 在上海 and Tokyo.", "words", seg)
    assert [w for w, _, _ in mixed] == ["Obama", "在", "上海", "and", "Tokyo", "."]
    assert segmenter("none") is None


def test_chinese_unlabeled_text_is_segmented_in_prepare_data(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    (tmp_path / "zh.txt").write_text("習近平在北京會見了美國總統。\n", encoding="utf-8")
    langs = language_sources(root)
    langs[2]["unlabeled"] = [str(tmp_path / "zh.txt")]
    _, words, _ = transfer_of(prepare_data.run(config(tmp_path, langs, segmenter="jieba")))
    assert ["習近平", "在", "北京", "會見", "了", "美國", "總統", "。"] in words
