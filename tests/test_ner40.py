"""Forty languages in one run (configs/ner40.yaml): MasakhaNER's `word TAG` files beside Universal
NER's CoNLL-U-like ones, with per-language reader settings or a detected layout recorded on the
data card; empty-word lines failed on (file:line) or dropped and counted; a language without a
test split refused in one line; DATE mapped to O by data.label_map; the per-language table of
report.md weakest first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import prepare_data
from components.lib.contracts import token_data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PROJECT_ROOT, load_config, validate_config
from components.lib.sources import conll
from tests.helpers import language_sources, write_masakhaner_like, write_uner_like

UNER = {"format": "conll", "conll_token_field": 1, "conll_tag_field": 2, "conll_comments": True, "conll_delimiter": "tab"}


def masakhaner_sources(root: Path, langs: tuple[str, ...] = ("mm",), **keys) -> list[dict]:
    return [{"lang": lang, "source": str(root / lang / "train.txt"), "test_source": str(root / lang / "test.txt"), **keys}
            for lang in langs]


def config(tmp_path: Path, languages: list[dict], out: str = "out", **data_keys):
    return validate_config({
        "task": "token-classification", "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
        "data": {"languages": languages, "train_sentences": 15, "dev_sentences": 5, "output_dir": str(tmp_path / out),
                 **data_keys},
    })


def card_of(result) -> dict:
    return json.loads((Path(result.data_dir) / "data_card.json").read_text())


def test_a_masakhaner_style_file_is_read_with_the_defaults(tmp_path):
    root = write_masakhaner_like(tmp_path / "ner")
    result = prepare_data.run(config(tmp_path, masakhaner_sources(root)))
    assert result.rows == {"train": 15, "dev": 5, "test": 20, "transfer": 40}
    test = token_data.read_token_labeled(Path(result.data_dir) / "test.parquet").table
    first = (root / "mm" / "test.txt").read_text().split("\n\n")[0].splitlines()
    assert test.column("tokens").to_pylist()[0] == [line.split(" ")[0] for line in first]
    card = card_of(result)
    assert card["read"]["mm"]["train"] == {"sentences": 60, "words": sum(len(s.split("\n")) for s in (
        root / "mm" / "train.txt").read_text().strip().split("\n\n")), "dropped_empty_words": 0, "dropped_lines": [],
        "layout": "fields (data.conll_*)"}
    assert card["reader"]["mm"]["conll_delimiter"] == "whitespace" and card["reader"]["mm"]["conll_tag_field"] == -1


def test_masakhaner_and_uner_languages_in_one_run(tmp_path):
    ner, uner = write_masakhaner_like(tmp_path / "ner"), write_uner_like(tmp_path / "uner", ("uu",))
    mixed = masakhaner_sources(ner) + [{**language_sources(uner, ("uu",))[0], **UNER}]
    card = card_of(prepare_data.run(config(tmp_path, mixed, "a")))
    assert card["languages"]["test"] == {"mm": 20, "uu": 20}
    assert card["reader"]["uu"]["conll_token_field"] == 1 and card["reader"]["mm"]["conll_token_field"] == 0
    # without its own settings the UNER file is read as `word tag` and fails at its first line, naming it
    with pytest.raises(DataError, match=r"uu/train\.iob2:1: tag 'uu-train-0' is outside the IOB scheme"):
        prepare_data.run(config(tmp_path, masakhaner_sources(ner) + language_sources(uner, ("uu",)), "b", format="conll"))
    # conll_layout auto: each file's layout detected, logged and recorded; the same split as with the settings
    auto = prepare_data.run(config(tmp_path, masakhaner_sources(ner) + language_sources(uner, ("uu",)), "c",
                                   format="conll", conll_layout="auto"))
    got = card_of(auto)["read"]
    assert got["uu"]["train"]["layout"] == f"auto: {conll.CONLLU_LIKE.description}"
    assert got["mm"]["test"]["layout"] == f"auto: {conll.WORD_TAG_SPACE.description}"
    for split in ("train", "dev", "test", "transfer"):
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "c" / f"{split}.parquet").read_bytes()
    with pytest.raises(UserError, match="entry 'uu': conll_layout auto detects"):
        prepare_data.run(config(tmp_path, [{**language_sources(uner, ("uu",))[0], **UNER, "conll_layout": "auto"}], "d"))


def test_detect_layout(tmp_path):
    tab = tmp_path / "tab.tsv"
    tab.write_text("EU\tB-ORG\nrejects\tO\n\n#hashtag\tO\n")
    assert conll.detect_layout(tab) == conll.WORD_TAG_TAB
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="blank.txt: no word lines"):
        conll.detect_layout(tmp_path / "blank.txt")


def test_an_empty_word_fails_with_its_line_or_is_dropped_and_counted(tmp_path):
    root = write_masakhaner_like(tmp_path / "ner", ("mm", "nn"))
    path = root / "mm" / "train.txt"
    lines = path.read_text().split("\n")
    at = [i for i, t in enumerate(lines) if t.endswith(" O")][3:5]
    for i in at:
        lines[i] = " O"  # MasakhaNER xho/train.txt:44520
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"mm/train\.txt:{at[0] + 1}: the word is empty \(' O'\); set data.conll_empty_words=drop"):
        prepare_data.run(config(tmp_path, masakhaner_sources(root, ("mm", "nn"))))
    assert not (tmp_path / "out").exists()
    sources = masakhaner_sources(root, ("mm",), conll_empty_words="drop") + masakhaner_sources(root, ("nn",))
    result = prepare_data.run(config(tmp_path, sources))
    read = card_of(result)["read"]
    assert read["mm"]["train"]["dropped_empty_words"] == 2 and read["nn"]["train"]["dropped_empty_words"] == 0
    assert read["mm"]["train"]["dropped_lines"] == [f"{path}:{i + 1}" for i in at]
    assert card_of(result)["reader"]["mm"]["conll_empty_words"] == "drop"
    words = [w for s in conll.iter_conll(path, dropped=[]) for w in s.words]
    assert read["mm"]["train"]["words"] == len(words) == sum(1 for t in lines if t.strip()) - 2
    # tab-separated fields: a blank word field is the same empty word
    tsv = tmp_path / "x.iob2"
    tsv.write_text("1\tEU\tB-ORG\n2\t\tO\n")
    with pytest.raises(DataError, match=r"x\.iob2:2: the word is empty"):
        list(conll.iter_conll(tsv, 1, 2, tabs=True))
    dropped: list[int] = []
    assert [s.words for s in conll.iter_conll(tsv, 1, 2, tabs=True, dropped=dropped)] == [["EU"]] and dropped == [2]



def test_an_empty_word_read_as_unlabeled_words_is_not_the_word_o(tmp_path):
    """A MasakhaNER-style file read for its words only (an unlabeled CoNLL source): ` O` is a line
    without its word, as when reading tags, not the word "O"; a words-only file's lines stay words."""
    from components.lib.sources.token_ingest import read_conll_file

    path = tmp_path / "u.txt"
    path.write_text("Kampala B-LOC\nni O\n O\nmji O\n\nO O\n")
    with pytest.raises(DataError, match=r"u\.txt:3: the word is empty \(' O'\); set data.conll_empty_words=drop"):
        list(conll.iter_conll(path, 0, None))
    dropped: list[int] = []
    assert [s.words for s in conll.iter_conll(path, 0, None, dropped=dropped)] == [["Kampala", "ni", "mji"], ["O"]]
    assert dropped == [3]
    dc = config(tmp_path, masakhaner_sources(tmp_path), conll_empty_words="drop").data
    got = read_conll_file(str(path), "unsup/", dc, tag_field=False)
    assert got.words == [["Kampala", "ni", "mji"], ["O"]] and got.tags is None
    words_only = tmp_path / "w.txt"
    words_only.write_text("Kampala\n ni\nmji\n")  # one field a line: a leading space is only a space
    assert [s.words for s in conll.iter_conll(words_only, 0, None)] == [["Kampala", "ni", "mji"]]

def test_a_language_without_a_test_split_is_one_line_and_exit_2(tmp_path):
    root = write_masakhaner_like(tmp_path / "ner", ("mm", "nn"))
    no_test = masakhaner_sources(root, ("mm",)) + [{"lang": "nn", "source": str(root / "nn" / "train.txt")}]
    with pytest.raises(UserError, match=r"entry 'nn': no test split in .*nn/train\.txt \(set its test_source\)"):
        prepare_data.run(config(tmp_path, no_test))
    missing = masakhaner_sources(root, ("mm",)) + [{"lang": "nn", "source": str(root / "nn" / "train.txt"),
                                                    "test_source": str(root / "nn" / "gone.txt")}]
    with pytest.raises(DataError, match=r"nn/gone\.txt: file not found \(data\.languages entry 'nn', test_source\)"):
        prepare_data.run(config(tmp_path, missing))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "token-classification", "tracking": {"enabled": False},
                                   "data": {"languages": no_test, "output_dir": str(tmp_path / "out"),
                                            "train_sentences": 15, "dev_sentences": 5}}))
    proc = subprocess.run([sys.executable, "-m", "components.prepare_data", "--config", str(cfg)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: config key 'data.languages' entry 'nn': no test split in "
                                                    f"{root / 'nn' / 'train.txt'} (set its test_source)")
    assert not (tmp_path / "out").exists()


def test_label_map_maps_date_to_o(tmp_path):
    root = write_masakhaner_like(tmp_path / "ner", date_every=3)
    assert "B-DATE" in (root / "mm" / "train.txt").read_text()
    with pytest.raises(DataError, match="tag 'B-DATE'"):  # no silent drop: DATE is a tag unless mapped
        prepare_data.run(config(tmp_path, masakhaner_sources(root), label_names=["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG",
                                                                                  "B-PER", "I-PER"]))
    result = prepare_data.run(config(tmp_path, masakhaner_sources(root), label_map={"B-DATE": "O", "I-DATE": "O"}))
    assert result.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert card_of(result)["label_map"]["tags_mapped"] == {"B-DATE": 27, "I-DATE": 0}  # every 3rd of 80 sentences
    with pytest.raises(UserError, match="'B-DATE' maps to 'DATE', outside the IOB scheme"):
        prepare_data.run(config(tmp_path, masakhaner_sources(root), "bad", label_map={"B-DATE": "DATE"}))


def test_the_ner40_preset(monkeypatch):
    monkeypatch.delenv("NER_DIR", raising=False)
    monkeypatch.delenv("UNER_DIR", raising=False)
    cfg = load_config(PROJECT_ROOT / "configs" / "ner40.yaml")
    langs = {ls.lang: ls for ls in cfg.data.languages}
    assert len(langs) == 40 and "no" in langs and cfg.teacher.model == "packaged:multilingual-e5-small"
    for lang in ("da", "hr", "pt", "sv", "zh"):
        assert langs[lang].source.endswith(f"uner/{lang}/train.iob2") and langs[lang].conll_delimiter == "tab"
        assert (langs[lang].conll_token_field, langs[lang].conll_tag_field, langs[lang].conll_comments) == (1, 2, True)
    masakhaner = [ls for ls in langs.values() if ls.source.endswith("/train.txt")]
    assert len(masakhaner) == 35 and all(ls.test_source.endswith(f"ner/{ls.lang}/test.txt") for ls in masakhaner)
    assert [ls.lang for ls in langs.values() if ls.conll_empty_words] == ["xho"]
    assert cfg.data.label_map == {"B-DATE": "O", "I-DATE": "O", "B-OTH": "O", "I-OTH": "O"}
    assert (cfg.data.train_sentences, cfg.data.dev_sentence_budget) == (200, 100)
    assert cfg.student.embed_rank == 64  # 35x needs <= 3.36M parameters: ~2.9M at rank 64
    assert cfg.teacher.group_by_length  # ~2.3x fewer padded tokens: the teacher fits the four-hour seed


def test_the_per_language_table_is_weakest_first():
    from components.lib.evaluation.report_md import language_lines

    f1 = {"teacher": {"aa": 0.8, "bb": 0.7, "cc": 0.9}, "labels-only": {"aa": 0.3, "bb": 0.4, "cc": 0.2},
          "soft+repr": {"aa": 0.6, "bb": 0.35, "cc": 0.7}}

    def model(name: str, **extra) -> dict:
        per = {lang: {"f1": v, "sentences": 10 * (k + 1), "entities_gold": 5 * (k + 1)} for k, (lang, v) in enumerate(f1[name].items())}
        return {"mode": name, "per_language": per, "language_macro_f1": sum(f1[name].values()) / 3, **extra}

    student = model("soft+repr", oov_rate=0.05, oov_rate_per_language={"aa": 0.01, "bb": 0.1, "cc": 0.04})
    baseline = model("labels-only")
    summary = {lang: {"retention": f1["soft+repr"][lang] / f1["teacher"][lang]} for lang in f1["teacher"]}
    report = {"teacher": model("teacher"), "student": student, "baseline": baseline,
              "students": {"soft+repr": student, "labels-only": baseline},
              "languages_summary": {"per_language": summary, "retention_mean": 0.7}}
    lines = language_lines(report)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| language", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == ["bb", "aa", "cc", "macro (unweighted)"]
    assert rows[0] == "| bb | 0.700 | 0.400 | 0.350 | 0.500 | 0.100 | 20 | 10 |"
    assert rows[-1] == "| macro (unweighted) | 0.800 | 0.300 | 0.550 | 0.700 | 0.050 | 60 | – |"
    assert ("| language | teacher F1 | labels-only baseline F1 | student F1 | retention | student OOV | test sentences "
            "| entities |") in lines


def test_the_benchmark_table_and_plot_on_a_synthetic_three_language_run(tmp_path):
    """multilingual_ner.summarise -> markdown -> plot_languages on evaluate reports of two seeds over
    three languages: the weakest student first, OOV and test sentences per language, the vocabulary
    line, and one point per language with the retention below 0.90 the first drawn."""
    import matplotlib.image

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import multilingual_ner
    from plot_languages import plot_languages

    def report(seed: int) -> dict:
        f1 = {"teacher": {"aa": 0.8, "bb": 0.7, "cc": 0.4}, "baseline": {"aa": 0.5, "bb": 0.3, "cc": 0.2},
              "student": {"aa": 0.78 + 0.01 * seed, "bb": 0.56, "cc": 0.39}}
        per = {name: {"per_language": {lang: {"f1": v, "sentences": 100 + k} for k, (lang, v) in enumerate(f.items())}}
               for name, f in f1.items()}
        per["student"].update(oov_rate_per_language={"aa": 0.01 * seed, "bb": 0.2, "cc": 0.05},
                              vocab={"size": 900, "teacher_vocab_size": 250002, "max_vocab": 900, "min_count": 1,
                                     "counted_on": "train + transfer"})
        return {**per, "languages": ["aa", "bb", "cc"], "compression": 40.0, "speedup": 50.0, "speedup_onnx": 60.0,
                "speedup_rounds": {"rounds": [40.0 + seed, 50.0, 60.0 * seed]},
                "params": {"student": 2_000_000, "teacher": 80_000_000},
                "throughput": {"teacher": 10.0, "student": 500.0}}

    records = {f"[s{s}]/evaluate": {"result": {"report": report(s)}} for s in (1, 2)}
    summary = multilingual_ner.summarise(records)
    assert abs(summary["oov"]["aa"] - 0.015) < 1e-12 and summary["test_sentences"] == {"aa": 100, "bb": 101, "cc": 102}
    assert summary["retention_at_least_0_90"] == {"count": 2, "of": 3, "below": ["bb"]}
    assert summary["teacher_fails"] == ["cc"]
    # six rounds pooled over the two seeds: 41, 50, 60, 42, 50, 120 -> median 50, the target read from it
    assert summary["speedup_rounds"] == {"median": 50.0, "min": 41.0, "max": 120.0, "n": 6}
    assert summary["speedup_onnx_rounds"] is None
    assert [t["value"] for t in summary["targets"] if t["target"].startswith("speed-up")] == [50.0]
    md = multilingual_ner.markdown(summary).splitlines()
    rows = [line for line in md if line.startswith("| ") and not line.startswith(("| language", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == ["cc", "bb", "aa", "macro"]
    assert rows[1] == "| bb | 0.700 ± 0.000 | 0.300 ± 0.000 | 0.560 ± 0.000 | 0.800 | 0.200 | 101 |"
    assert rows[-1].endswith("| 303 |")
    assert any("Over all 6 interleaved timing rounds, median (min-max): torch 50.0x (41.0-120.0)." in line for line in md)
    assert any(line.startswith("Student vocabulary: 900 pieces of the teacher's 250,002 (student.max_vocab 900") for line in md)
    png = tmp_path / "ner3.png"
    drawn = plot_languages(summary, png, (1.0, multilingual_ner.RETENTION_MEAN_MIN, multilingual_ner.RETENTION_EACH_MIN),
                           multilingual_ner.TEACHER_FAILS_BELOW)
    assert [p[0] for p in drawn] == ["bb", "cc", "aa"]  # weakest retention first
    assert abs(drawn[0][3] - 0.8) < 1e-12
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 400


def test_vocabulary_coverage_per_language_and_its_correlation_with_retention():
    """benchmarks/vocab_coverage.py: distinct pieces, the kept share of them and of their occurrences
    per language; Spearman of retention against OOV share (here perfectly opposite) and teacher F1."""
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    from vocab_coverage import correlations, count_pieces, coverage

    got = coverage(count_pieces({"aa": [[1, 2, 2], [2, 3]], "bb": [[7, 8, 9, 9]]}), kept={2, 3, 9}, sentences={"aa": 2, "bb": 1})
    assert got["aa"] == {"sentences": 2, "occurrences": 5, "distinct": 3, "kept_distinct": 2 / 3, "kept_occurrences": 4 / 5}
    assert got["bb"]["distinct"] == 3 and got["bb"]["kept_distinct"] == 1 / 3 and got["bb"]["kept_occurrences"] == 2 / 4
    result = {"languages": {lang: {"teacher": {"mean": t}} for lang, t in (("aa", 0.8), ("bb", 0.6), ("cc", 0.7), ("dd", 0.5))},
              "retention": {"aa": 0.97, "bb": 0.9, "cc": 0.8, "dd": 0.6}, "oov": {"aa": 0.01, "bb": 0.05, "cc": 0.1, "dd": 0.3}}
    c = correlations(result)
    assert abs(c["oov"]["spearman_rho"] + 1.0) < 1e-12 and c["oov"]["languages"] == 4
    assert abs(c["teacher_f1"]["spearman_rho"] - 0.8) < 1e-12  # ranks 4,2,3,1 vs 4,3,2,1


def test_vocabulary_what_if_rankings():
    """Equal weighting lets a small language's pieces in where global frequency passes them over."""
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    from vocab_coverage import count_pieces, ranked, what_if

    counts = count_pieces({"big": [[1, 1, 2, 2, 3, 3]] * 10, "small": [[7, 8]]})
    assert ranked(counts, "global") == [1, 2, 3, 7, 8]
    assert ranked(counts, "equal") == [7, 8, 1, 2, 3]  # each 1/2 of small's text against 1/3 of big's
    test = count_pieces({"big": [[1, 2, 3]], "small": [[7, 8, 9]]})
    rows = {(r["pieces"], r["ranking"]): r for r in what_if(counts, test, [2])}
    assert rows[(2, "global")]["oov"] == pytest.approx({"big": 1 / 3, "small": 1.0})
    assert rows[(2, "equal")]["oov"] == pytest.approx({"big": 1.0, "small": 1 / 3})
    assert rows[(5, "every piece seen")]["oov"] == pytest.approx({"big": 0.0, "small": 1 / 3})
    assert rows[(5, "every piece seen")]["max"] == pytest.approx(1 / 3)
