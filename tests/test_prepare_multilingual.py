"""prepare-data over several languages (data.languages): one labeled set with a `lang` column,
the low-resource protocol per language, each language's test split, overlap checks across all
languages, and one-line errors (file and line) for missing files, non-IOB tags and short lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components import prepare_data
from components.lib.contracts import token_data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PROJECT_ROOT, validate_config
from tests.helpers import NER_TAGS, language_sources, make_ner_sentences, write_conllu, write_uner_like

CONLLU = {"format": "conll", "conll_token_field": 1, "conll_tag_field": 2, "conll_comments": True, "conll_delimiter": "tab"}


def config(tmp_path: Path, languages: list[dict], out: str = "out", **data_keys):
    return validate_config({
        "task": "token-classification", "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
        "data": {"languages": languages, "train_sentences": 15, "dev_sentences": 5, "output_dir": str(tmp_path / out),
                 **CONLLU, **data_keys},
    })


def langs_of(path: Path) -> list[str]:
    return token_data.read_token_labeled(path).table.column("lang").to_pylist()


def test_languages_are_read_into_one_set_with_a_lang_column(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    result = prepare_data.run(config(tmp_path, language_sources(root)))
    out = Path(result.data_dir)
    for split, per_lang in (("train", 15), ("dev", 5), ("test", 20)):
        langs = langs_of(out / f"{split}.parquet")
        assert {lang: langs.count(lang) for lang in set(langs)} == {"aa": per_lang, "bb": per_lang, "cc": per_lang}, split
    transfer = token_data.read_token_transfer(out / "transfer.parquet")
    t_langs = transfer.column("lang").to_pylist()
    assert {lang: t_langs.count(lang) for lang in set(t_langs)} == {"aa": 40, "bb": 40, "cc": 40}  # the rest of each train
    assert "tags" not in transfer.column_names
    # each language's test split is its own official test file, comments skipped, ids prefixed by language
    test = token_data.read_token_labeled(out / "test.parquet").table
    assert all(i.startswith(("aa/test/", "bb/test/", "cc/test/")) for i in test.column("id").to_pylist())
    assert not any(w.startswith("#") for s in test.column("tokens").to_pylist() for w in s)
    import json

    card = json.loads((out / "data_card.json").read_text())
    assert card["languages"]["train"] == {"aa": 15, "bb": 15, "cc": 15}
    assert set(card["sources"]["train"]) == {"aa", "bb", "cc"} and card["checks"]["transfer_in_test"] == 0


def test_per_language_sampling_is_seeded_and_nested(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    first = Path(prepare_data.run(config(tmp_path, language_sources(root), "a")).data_dir)
    again = Path(prepare_data.run(config(tmp_path, language_sources(root), "b")).data_dir)
    more = Path(prepare_data.run(config(tmp_path, language_sources(root), "c", train_sentences=25)).data_dir)
    for split in ("train", "dev", "test", "transfer"):
        assert (first / f"{split}.parquet").read_bytes() == (again / f"{split}.parquet").read_bytes(), split
    ids = lambda d, s: set(token_data.read_token_labeled(d / f"{s}.parquet").table.column("id").to_pylist())  # noqa: E731
    assert ids(first, "dev") == ids(more, "dev") and ids(first, "train") < ids(more, "train")


def test_overlap_is_checked_across_languages(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    # a Danish-like test sentence also sits in another language's train file
    sents, tags, names = make_ner_sentences(3, seed=999)
    for lang in ("aa", "bb"):
        path = root / lang / ("test.iob2" if lang == "aa" else "train.iob2")
        extra = write_conllu(tmp_path / f"extra-{lang}.iob2", sents, tags, names, f"x{lang}").read_text()
        path.write_text(path.read_text() + extra)
    result = prepare_data.run(config(tmp_path, language_sources(root)))
    assert result.overlap_removed == 3
    with pytest.raises(DataError, match="3 train sentences are also in the test split"):
        prepare_data.run(config(tmp_path, language_sources(root), "fail", on_overlap="fail"))


def test_a_word_may_hold_a_space_with_tab_separated_fields(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    path = root / "aa" / "train.iob2"
    path.write_text(path.read_text().replace("\tO\t-\t-\n", "\tO\t-\t-\n", 1).replace("1\t", "1\t34 470 ", 1))
    out = Path(prepare_data.run(config(tmp_path, language_sources(root))).data_dir)
    words = [w for split in ("train", "dev") for s in token_data.read_token_labeled(out / f"{split}.parquet").table.column("tokens").to_pylist() for w in s]
    words += [w for s in token_data.read_token_transfer(out / "transfer.parquet").column("tokens").to_pylist() for w in s]
    assert any(w.startswith("34 470 ") for w in words)


def test_bad_language_inputs_fail_in_one_line_and_write_nothing(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    missing = language_sources(root) + [{"lang": "dd", "source": str(root / "dd" / "train.iob2"), "test_source": str(root / "dd" / "test.iob2")}]
    with pytest.raises(DataError, match=r"dd/train\.iob2: file not found \(data\.languages entry 'dd'\)"):
        prepare_data.run(config(tmp_path, missing))
    bad = root / "bb" / "train.iob2"
    text = bad.read_text().splitlines()
    line = next(i for i, t in enumerate(text) if "\tB-PER\t" in t)
    text[line] = text[line].replace("\tB-PER\t", "\tPERSON\t")
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"bb/train\.iob2:{line + 1}: tag 'PERSON' is outside the IOB scheme"):
        prepare_data.run(config(tmp_path, language_sources(root)))
    text[line] = text[line].split("\t")[0] + "\tword"  # a line without its tag field
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"bb/train\.iob2:{line + 1}: expected at least 3 fields, got 2"):
        prepare_data.run(config(tmp_path, language_sources(root)))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="data.languages needs task: token-classification"):
        validate_config({"data": {"languages": language_sources(root)}})
    with pytest.raises(UserError, match="distinct language codes"):
        validate_config({"task": "token-classification", "data": {"languages": language_sources(root)[:1] * 2}})


def test_the_cli_exits_2_with_one_line(tmp_path):
    root = write_uner_like(tmp_path / "uner")
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({
        "task": "token-classification", "tracking": {"enabled": False},
        "data": {"languages": language_sources(root) + [{"lang": "zz", "source": str(root / "zz.iob2")}],
                 "output_dir": str(tmp_path / "out"), "train_sentences": 15, "dev_sentences": 5, **CONLLU}}))
    proc = subprocess.run([sys.executable, "-m", "components.prepare_data", "--config", str(cfg)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {root / 'zz.iob2'}: file not found (data.languages entry 'zz')"
    assert not (tmp_path / "out").exists()


def test_a_hugging_face_token_dataset_per_language(tmp_path):
    """Each language its own datasets dir (save_to_disk; on the hub: wikiann with dataset_config de,
    fr, ...): ClassLabel tags by name, the dataset's own train/test splits, one lang per entry."""
    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_TAGS))})
    languages = []
    for k, lang in enumerate(("de", "fr")):
        sents, tags, _ = make_ner_sentences(40, seed=200 + k)
        sents = [[f"{lang}{w}" for w in s] for s in sents]
        part = lambda lo, hi: datasets.Dataset.from_dict({"tokens": sents[lo:hi], "ner_tags": tags[lo:hi]}, features=features)  # noqa: E731,B023
        datasets.DatasetDict({"train": part(0, 30), "test": part(30, 40)}).save_to_disk(str(tmp_path / lang))
        languages.append({"lang": lang, "source": str(tmp_path / lang)})
    cfg = validate_config({"task": "token-classification", "tracking": {"enabled": False}, "work_dir": str(tmp_path / "w"),
                           "data": {"languages": languages, "train_sentences": 10, "dev_sentences": 5, "output_dir": str(tmp_path / "out")}})
    result = prepare_data.run(cfg)
    assert result.label_names == NER_TAGS and result.rows == {"train": 20, "dev": 10, "test": 20, "transfer": 30}
    assert sorted(set(langs_of(tmp_path / "out" / "test.parquet"))) == ["de", "fr"]
