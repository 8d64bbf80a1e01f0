"""The token-classification DAG under kfp.local: a CoNLL file in, a registered NER tagger out.

Same pipeline function as classification (pipeline.build_pipeline); `task: token-classification`
in the config routes every step to its token code. A 2-layer BERT teacher and a synthetic
PER/LOC/ORG corpus keep it to a couple of minutes on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline
from components.lib.settings.config import PROJECT_ROOT, load_config
from components.lib.tracking import fingerprint
from tests.helpers import make_ner_sentences

TINY_NER = PROJECT_ROOT / "configs" / "tiny_ner.yaml"


def write_conll(path: Path, n: int = 260, seed: int = 3) -> Path:
    sents, tags, names = make_ner_sentences(n, seed=seed)
    lines = ["-DOCSTART- O", ""]
    for words, ids in zip(sents, tags, strict=True):
        lines += [f"{w}\t{names[t]}" for w, t in zip(words, ids, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def tiny_ner_env(tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.setenv("DISTILFLOW_TINY_NER_DATA", str(write_conll(tmp_path / "ner.conll")))
    monkeypatch.setenv("DISTILFLOW_TINY_TEACHER", str(tiny_bert_dir))
    monkeypatch.setenv("DISTILFLOW_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.integration
def test_token_classification_dag_under_kfp_local(tiny_ner_env, capsys, monkeypatch):
    import mlflow
    import pandas as pd

    monkeypatch.setattr(fingerprint, "code_digest", lambda root=None: "pinned-for-this-test")
    cfg = load_config(TINY_NER)
    assert cfg.is_token_task
    first = pipeline.run_local(cfg)
    out = capsys.readouterr().out
    work = tiny_ner_env / "work"
    assert "entity-F1" in out and "student (soft+repr)" in out and "baseline (labels-only)" in out

    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["task"] == "token-classification" and report["metric"] == "f1"
    assert set(report["students"]) == {"soft+repr", "labels-only"}
    for model in (report["teacher"], report["student"]):
        assert 0 <= model["f1"] <= 1 and {"PER", "LOC", "ORG"} <= set(model["per_type"])
    assert report["teacher"]["params"] > report["student"]["params"] and report["compression"] > 1
    steps = {"prepare-data", "finetune-teacher", "pseudo-label-transfer-set", "merge-pseudo-labels",
             "distill-student", "distill-student-2", "evaluate", "export"}
    assert set(first["executed"]) == steps

    # the pseudo-labeled set is the token contract, one row per transfer sentence
    from components.lib.contracts import token_data

    merged = list((work / "kfp").glob("**/merge-pseudo-labels/**/pseudo.parquet"))
    transfer = list((work / "kfp").glob("**/prepare-data/**/transfer.parquet"))
    assert len(merged) == 1 and len(transfer) == 1
    pseudo, meta = token_data.read_token_pseudo(merged[0])
    assert meta["repr_dim"] == 32 and len(pseudo) == token_data.token_transfer_rows(transfer[0])

    # the exported pyfunc tags raw sentences with character spans
    client = mlflow.MlflowClient(first["tracking_uri"], first["tracking_uri"])
    versions = client.search_model_versions("name='distilflow-tiny-ner'")
    assert len(versions) == 1
    model = mlflow.pyfunc.load_model(f"models:/distilflow-tiny-ner/{versions[0].version}")
    text = "yesterday alice met bob smith near new york"
    pred = model.predict(pd.DataFrame({"text": [text]}))
    entities = pred["entities"].iloc[0]
    if isinstance(entities, str):
        entities = json.loads(entities)
    for ent in entities:
        assert text[ent["start"]:ent["end"]] == ent["text"] and ent["entity"] in {"PER", "LOC", "ORG"}
