"""lib/models/teacher.py scoring and the finetune-teacher step on a tiny BERT (real tokenizer, real
Trainer, real MLflow sqlite store)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from components import finetune_teacher
from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.core.torch_utils import count_parameters
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from tests.helpers import write_tiny_task

torch.set_num_threads(1)
NAMES = ["sport", "tech", "money"]
TEXTS = [
    "goal",
    "the striker scored a late goal and the coach celebrated with the whole team at the stadium",
    "chip prices",
    "shares fell as the bank reported a loss and investors sold stocks across the market today",
    "a new laptop",
    "server",
]


@pytest.fixture(scope="module")
def tiny_classifier(tiny_bert_dir):
    model, tok = T.load_teacher(tiny_bert_dir, label_names=NAMES)
    return model, tok


def _cfg(tmp_path, task_dir, teacher_model, tracking_on=False, **teacher) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "work_dir": str(tmp_path / "work"),
        "data": {"output_dir": str(task_dir)},
        "teacher": {"model": str(teacher_model), "batch_size": 8, "num_threads": 1, **teacher},
        "tracking": {"enabled": tracking_on, "experiment": "test-teacher"},
    })


# ---------------------------------------------------------------- scoring

def test_load_teacher_sets_labels_and_fresh_head(tiny_classifier):
    model, _ = tiny_classifier
    assert T.label_names_of(model) == NAMES
    assert model.config.label2id == {n: i for i, n in enumerate(NAMES)}
    assert model.config.num_labels == 3 and not model.training
    assert count_parameters(model) > 900_000


def test_score_restores_order_after_length_bucketing(tiny_classifier):
    model, tok = tiny_classifier
    logits, reprs = T.score(model, tok, TEXTS, max_length=64, batch_size=2, layer=-1, device="cpu")
    assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), 3)
    assert reprs.dtype == np.float32 and reprs.shape == (len(TEXTS), 32)
    # reference: one text at a time, in input order, no padding at all
    for i, text in enumerate(TEXTS):
        ref_logits, ref_repr = T.score(model, tok, [text], max_length=64, batch_size=1, layer=-1)
        np.testing.assert_allclose(logits[i], ref_logits[0], atol=1e-5)
        np.testing.assert_allclose(reprs[i], ref_repr[0], atol=1e-5)
    assert T.score(model, tok, TEXTS, 64, 2)[1] is None  # no layer asked, no hidden states


def test_mean_pooling_ignores_padding(tiny_classifier):
    model, tok = tiny_classifier
    short, long = TEXTS[0], TEXTS[1]
    # batch_size 2: the short text is padded to the long one's length
    _, padded = T.score(model, tok, [short, long], 64, batch_size=2, layer=1, pooling="mean")
    _, alone = T.score(model, tok, [short], 64, batch_size=1, layer=1, pooling="mean")
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)
    enc = tok([short], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[1][0]  # (T, H)
    np.testing.assert_allclose(alone[0], hidden.mean(0).numpy(), atol=1e-5)
    _, cls = T.score(model, tok, [short], 64, 1, layer=1, pooling="cls")
    np.testing.assert_allclose(cls[0], hidden[0].numpy(), atol=1e-5)


def test_score_rejects_bad_layer_and_pooling(tiny_classifier):
    model, tok = tiny_classifier
    with pytest.raises(UserError, match="layer 5 out of range"):
        T.score(model, tok, TEXTS, 64, 2, layer=5)
    with pytest.raises(UserError, match="pooling 'max'"):
        T.score(model, tok, TEXTS, 64, 2, layer=-1, pooling="max")


# ---------------------------------------------------------------- finetune-teacher

@pytest.fixture(scope="module")
def task32(tmp_path_factory):
    """32 labeled examples per class: enough for the tiny BERT to learn the topics."""
    return write_tiny_task(tmp_path_factory.mktemp("task32"), train=32, dev=8, test=4, transfer=20, seed=1)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, task32, tiny_bert_dir):
    """One tracked fine-tuning run, shared by the tests that inspect its outputs."""
    tmp = tmp_path_factory.mktemp("ft")
    data_dir = tmp / "data"
    shutil.copytree(task32, data_dir)
    (data_dir / "test.parquet").unlink()  # the step must never need test
    cfg = _cfg(tmp, data_dir, tiny_bert_dir, tracking_on=True, lr=3e-3, epochs=6, patience=3)
    return cfg, finetune_teacher.run(cfg)


def test_finetune_learns_and_writes_hf_model_dir(finetuned):
    cfg, res = finetuned
    assert res.dev_accuracy > 0.6  # chance is 1/3
    out = cfg.teacher_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(3)] == NAMES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev_accuracy"] == pytest.approx(res.dev_accuracy)
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, res.epochs_run + 1))
    assert metrics["history"][0]["dev_accuracy"] < metrics["dev_accuracy"]
    assert metrics["params"] == res.params and metrics["train_examples_per_s"] > 0
    model, tok = T.load_teacher(out)
    dev = data.read_labeled(cfg.data_dir / "dev.parquet")
    logits, _ = T.score(model, tok, dev.table.column("text").to_pylist(), 128, 16)
    assert (logits.argmax(1) == dev.table.column("label").to_numpy()).mean() == pytest.approx(res.dev_accuracy)


def test_finetune_logs_to_mlflow_and_runs_uri_loads(finetuned):
    import mlflow

    cfg, res = finetuned
    assert res.mlflow_run_id and res.model_uri == f"runs:/{res.mlflow_run_id}/teacher"
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(res.mlflow_run_id)
    assert run.data.metrics["dev_accuracy"] == pytest.approx(res.dev_accuracy)
    assert run.data.params["teacher.lr"] == "0.003"
    history = client.get_metric_history(res.mlflow_run_id, "dev_accuracy")
    assert {m.step for m in history} >= set(range(1, res.epochs_run + 1))
    local = tracking.resolve_model_ref(res.model_uri, cfg)
    model, tok = T.load_teacher(local)
    ref_model, _ = T.load_teacher(cfg.teacher_dir)
    assert T.label_names_of(model) == NAMES
    a, _ = T.score(model, tok, TEXTS, 64, 4)
    b, _ = T.score(ref_model, tok, TEXTS, 64, 4)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch(tmp_path, task32, tiny_bert_dir):
    # lr 1e-2 overshoots after a few epochs: dev accuracy peaks early, then falls or plateaus
    cfg = _cfg(tmp_path, task32, tiny_bert_dir, lr=1e-2, epochs=20, patience=2)
    res = finetune_teacher.run(cfg)
    history = json.loads((cfg.teacher_dir / "metrics.json").read_text())["history"]
    accs = [h["dev_accuracy"] for h in history]
    assert res.epochs_run < 20 and res.epochs_run == res.best_epoch + 2
    assert accs[res.best_epoch - 1] == max(accs)
    assert res.dev_accuracy == pytest.approx(max(accs))  # the saved model is the best epoch's


def test_finetune_false_checks_labels_and_saves(tmp_path, finetuned, task32, tiny_bert_dir):
    cfg, res = finetuned
    out = _cfg(tmp_path, cfg.data_dir, cfg.teacher_dir, finetune=False)
    again = finetune_teacher.run(out)
    assert again.epochs_run == 0 and again.best_epoch is None
    assert again.dev_accuracy == pytest.approx(res.dev_accuracy)
    assert (out.teacher_dir / "model.safetensors").exists()
    with pytest.raises(UserError, match="not a fine-tuned classifier"):
        finetune_teacher.run(_cfg(tmp_path, cfg.data_dir, tiny_bert_dir, finetune=False))
    other = tmp_path / "other"
    model, tok = T.load_teacher(cfg.teacher_dir, label_names=["a", "b", "c"])
    model.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(UserError, match=r"labels \['a', 'b', 'c'\] do not match"):
        finetune_teacher.run(_cfg(tmp_path, cfg.data_dir, other, finetune=False))


def test_finetune_cli_reports_missing_data(tmp_path, capsys):
    code = finetune_teacher.main(["--set", f"data.output_dir={tmp_path}/nope", "--set", "tracking.enabled=false"])
    assert code == 2
    assert "train.parquet: file not found" in capsys.readouterr().err


def test_same_seed_gives_the_same_teacher(tmp_path, task32, tiny_bert_dir):
    # The fresh head must be seeded too, not just the Trainer's shuffling and dropout.
    a = _cfg(tmp_path / "a", task32, tiny_bert_dir, lr=3e-3, epochs=1, seed=7)
    b = _cfg(tmp_path / "b", task32, tiny_bert_dir, lr=3e-3, epochs=1, seed=7)
    finetune_teacher.run(a)
    finetune_teacher.run(b)
    ma, tok = T.load_teacher(a.teacher_dir)
    mb, _ = T.load_teacher(b.teacher_dir)
    la, _ = T.score(ma, tok, TEXTS, 64, 4)
    lb, _ = T.score(mb, tok, TEXTS, 64, 4)
    np.testing.assert_array_equal(la, lb)
