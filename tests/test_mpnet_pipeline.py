"""An MPNet teacher through every step (the code path of packaged:all-mpnet-base-v2, on a 2-layer,
32-wide MPNet built from a config with a real MPNet tokenizer over the MiniLM word pieces): fine-tune,
pseudo-label with a hidden layer's representation, a soft+repr student whose embeddings are an SVD
of the MPNet word-embedding matrix, evaluate, ONNX export, the pyfunc and MLServer serving it; the
same for a tagger (without the server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components import distill_student, evaluate, export, finetune_teacher
from components import pseudo_label as P
from components.lib.contracts import data, token_data
from components.lib.settings.config import PipelineConfig
from tests.helpers import write_tiny_ner_task, write_tiny_task

torch.set_num_threads(1)
STUDENT = {"embed_dim": 16, "hidden": 16, "max_length": 32, "max_vocab": 2000, "batch_size": 16, "lr": 0.01,
           "repr_epochs": 1, "soft_epochs": 1, "label_epochs": 2, "patience": 1, "num_threads": 1, "baseline": False}


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    """MPNetModel (2 layers, hidden 32) + MPNetTokenizer (fast: <s> </s> <pad> <mask> around the
    MiniLM WordPiece vocabulary, no token_type_ids), saved like a hub model."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel, MPNetTokenizer

    words = (packaged_teacher_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tok = MPNetTokenizer(vocab={w: i for i, w in enumerate(words)})
    out = tmp_path_factory.mktemp("tiny-mpnet")
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    MPNetModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded.is_fast and "token_type_ids" not in loaded("a b")
    return out


def _cfg(root: Path, data_dir: Path, model: Path, **sections) -> PipelineConfig:
    raw = {
        "work_dir": str(root),
        "data": {"output_dir": str(data_dir), "row_group_rows": 64},
        "teacher": {"model": str(model), "lr": 3e-3, "epochs": 2, "batch_size": 8, "max_length": 32,
                    "patience": 1, "num_threads": 1},
        "transfer": {"batch_size": 16, "max_length": 32, "chunk_rows": 64, "num_threads": 1, "layer": 1},
        "student": STUDENT,
        "evaluate": {"batch_size": 16, "throughput_rows": 16, "latency_runs": 2, "num_threads": 1},
        "export": {"num_threads": 1, "quantize": False, "min_retention": 0.0, "register_model": False,
                   "model_name": "tiny-mpnet-student"},
        "tracking": {"enabled": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) else values
    return PipelineConfig.model_validate(raw)


def _check_teacher_and_student(cfg: PipelineConfig, task: str) -> None:
    from transformers import AutoConfig

    from components.lib.training.distill import teacher_embeddings

    teacher = AutoConfig.from_pretrained(cfg.teacher_dir)
    head = "MPNetForTokenClassification" if task == "token" else "MPNetForSequenceClassification"
    assert teacher.model_type == "mpnet" and teacher.architectures == [head]
    # the SVD init read the MPNet word-embedding matrix (model.mpnet.embeddings.word_embeddings)
    matrix = teacher_embeddings(cfg.teacher_dir)
    assert matrix.shape == (teacher.vocab_size, 32) and np.isfinite(matrix).all()
    student = json.loads((cfg.student_dir("soft+repr") / "config.json").read_text())
    assert student["teacher"]["hidden_size"] == 32 and student["teacher"]["vocab_size"] == teacher.vocab_size


def test_an_mpnet_classifier_teacher_through_every_step(tmp_path, tiny_mpnet_dir):
    import mlflow

    data_dir = write_tiny_task(tmp_path / "data")
    cfg = _cfg(tmp_path / "work", data_dir, tiny_mpnet_dir)
    teacher = finetune_teacher.run(cfg)
    assert np.isfinite(teacher.dev_accuracy)
    pseudo = P.run(cfg)
    assert pseudo.rows == data.read_transfer(data_dir / "transfer.parquet").num_rows
    table, _ = data.read_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    reprs = data.fixed_list_to_numpy(table.column("teacher_repr"), np.float16)  # MPNet layer 1, 32 wide
    assert reprs.shape == (table.num_rows, 32) and np.isfinite(reprs).all() and reprs.std() > 0
    student = distill_student.run(cfg)
    assert student.dev_accuracy > 0.4, student  # chance is 1/3
    _check_teacher_and_student(cfg, "sequence")

    evaluate.run(cfg)
    report = json.loads((cfg.eval_dir / "report.json").read_text())
    assert report["params"]["teacher"] > report["params"]["student"] > 0
    export.run(cfg)
    onnx = sorted(p.name for p in cfg.export_dir.rglob("*.onnx"))
    assert onnx, sorted(p.name for p in cfg.export_dir.rglob("*"))
    texts = ["the striker scored a goal for the team", "the bank raised the price of shares"]
    out = mlflow.pyfunc.load_model(str(cfg.export_dir / "pyfunc")).predict(texts)
    assert len(out) == 2 and set(out["label"]) <= {"sport", "tech", "money"}
    assert np.allclose(out[[c for c in out.columns if c.startswith("prob_")]].sum(axis=1), 1.0, atol=1e-4)

    from components.serve.codec import infer
    from components.serve.server import start, stop

    server = start(cfg.export_dir / "pyfunc", name="tiny-mpnet-student")  # MLServer, V2 protocol
    try:
        rows = infer(server.infer_url, texts)
    finally:
        stop(server)
    assert [r["label"] for r in rows] == out["label"].tolist()
    np.testing.assert_allclose([r["score"] for r in rows], out["score"].to_numpy(), atol=1e-9)


def test_an_mpnet_tagger_teacher_through_every_step(tmp_path, tiny_mpnet_dir):
    import mlflow

    data_dir = write_tiny_ner_task(tmp_path / "data")
    cfg = _cfg(tmp_path / "work", data_dir, tiny_mpnet_dir, task="token-classification",
               teacher={"lr": 5e-3, "epochs": 2}, student={"max_length": 24})
    finetune_teacher.run(cfg)
    P.run(cfg)
    table, _ = token_data.read_token_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    assert "teacher_repr" in table.column_names  # per word, from MPNet's hidden_states[1]
    distill_student.run(cfg)
    _check_teacher_and_student(cfg, "token")
    evaluate.run(cfg)
    export.run(cfg)
    tagger = mlflow.pyfunc.load_model(str(cfg.export_dir / "pyfunc"))
    out = tagger.predict(["alice flew to paris for acme corp"])
    assert len(out) == 1 and isinstance(out["entities"][0], list)
