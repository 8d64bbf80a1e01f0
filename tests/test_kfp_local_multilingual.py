"""The multilingual NER DAG under kfp.local on a tiny fixture: three languages read from
CoNLL-U files (data.languages), `lang` kept from prepare-data through the pseudo-labeled table to
per-language scores in the report."""

from __future__ import annotations

import json

import pytest

import pipeline
from components.lib.contracts import token_data
from components.lib.settings.config import PROJECT_ROOT, load_config
from components.lib.tracking import fingerprint
from tests.helpers import write_uner_like

TINY = PROJECT_ROOT / "configs" / "tiny_multilingual.yaml"
LANGS = ("da", "hr", "zh")


@pytest.mark.integration
def test_multilingual_dag_under_kfp_local(tmp_path, monkeypatch, tiny_bert_dir, capsys):
    monkeypatch.setenv("DISTILFLOW_TINY_UNER", str(write_uner_like(tmp_path / "uner", LANGS, train=70, test=20)))
    monkeypatch.setenv("DISTILFLOW_TINY_TEACHER", str(tiny_bert_dir))
    monkeypatch.setenv("DISTILFLOW_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(fingerprint, "code_digest", lambda root=None: "pinned-for-this-test")
    cfg = load_config(TINY)
    assert [ls.lang for ls in cfg.data.languages] == list(LANGS)
    import builtins

    print_before = builtins.print
    pipeline.run_local(cfg)
    assert builtins.print is print_before  # kfp.local's per-task print indentation does not leak
    work = tmp_path / "work"
    assert "entity-F1" in capsys.readouterr().out

    prepared = list((work / "kfp").glob("**/prepare-data/**/train.parquet"))
    assert len(prepared) == 1
    langs = token_data.read_token_labeled(prepared[0]).table.column("lang").to_pylist()
    assert sorted(set(langs)) == list(LANGS) and all(langs.count(lang) == 12 for lang in LANGS)
    merged = list((work / "kfp").glob("**/merge-pseudo-labels/**/pseudo.parquet"))
    pseudo, _ = token_data.read_token_pseudo(merged[0])
    assert set(pseudo.column("lang").to_pylist()) == set(LANGS)  # the transfer rows keep their language

    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["languages"] == list(LANGS)
    for model in (report["teacher"], report["student"], report["baseline"]):
        assert set(model["per_language"]) == set(LANGS)
        for scores in model["per_language"].values():
            assert 0 <= scores["f1"] <= 1 and scores["sentences"] == 20
