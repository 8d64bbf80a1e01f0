"""Shared fixtures: a tiny BERT built from a config (with the real packaged tokenizer), small
synthetic topic and NER tasks, tiny trained students/teachers and evaluated work dirs, and a real
MLflow server, so unit tests train real models in seconds on CPU.

pytest injects these by name; no test module imports this file. The plain builders behind them
live in tests/helpers.py (``from tests.helpers import ...``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    build_tiny_student,
    build_tiny_token_student,
    build_tiny_token_teacher,
    make_ner_work_dir,
    make_work_dir,
    ner_cfg,
    tiny_cfg,
    write_tiny_ner_task,
    write_tiny_task,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Code under test may call logging.basicConfig(force=True) (the kfp component bodies do, as a
    fresh executor process should); its handler holds this test's captured stderr, which is closed
    afterwards, so every later log record would print a 'Logging error' into another test's output."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _mlflow_env_restored() -> Iterator[None]:
    """mlflow.set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI:
    code under test that sets them (the serve CLI does) would point every later subprocess elsewhere."""
    from components.lib.core.env import scoped_env

    with scoped_env(**{k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}):
        yield


@pytest.fixture(scope="session")
def packaged_teacher_dir() -> Path:
    from components.lib.sources.assets import packaged_teacher_dir

    return packaged_teacher_dir()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    """A 2-layer, 32-wide BertModel with the real MiniLM WordPiece tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(packaged_teacher_dir)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def copy_dir(tmp_path):
    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory) -> Path:
    """A prepared data dir (what prepare-data writes) for the 3-class synthetic topic task."""
    return write_tiny_task(tmp_path_factory.mktemp("tiny-task"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URI of a running MLflow server (sqlite backend, --serve-artifacts) shared by the session."""
    from tests.mlflow_server import start_mlflow_server, stop_mlflow_server

    proc, uri, _ = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        stop_mlflow_server(proc)


# ---------------------------------------------------------------- tiny classification models

@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_tiny_student(tmp_path_factory.mktemp("tiny-student") / "soft_repr", packaged_teacher_dir)


@pytest.fixture(scope="session")
def tiny_factorised_student_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    """tiny_student_dir's student with (V, 8) x (8, 16) factorised embeddings."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_student(tmp_path_factory.mktemp("tiny-factorised") / "soft_repr", packaged_teacher_dir, embed_rank=8)


@pytest.fixture(scope="session")
def evaluated_work_dir(tmp_path_factory, packaged_teacher_dir) -> Path:
    """A work_dir after evaluate (tracking off): data, teacher, a trained soft+repr student, eval/.
    No baselines: the tiny student would lose to TF-IDF on the topic words, and the tests that use
    this gate on retention and the champion (tests/test_export.py has one case per baseline)."""
    import torch

    from components import evaluate

    torch.set_num_threads(1)
    root = make_work_dir(tmp_path_factory.mktemp("work"), packaged_teacher_dir, {"soft+repr": 40})
    evaluate.run(tiny_cfg(root, None, student={"baseline": False}, evaluate={"tfidf_baseline": False}))
    return root


# ---------------------------------------------------------------- token classification

@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory) -> Path:
    """A prepared data dir for the synthetic NER task (what prepare-data writes for token-classification)."""
    return write_tiny_ner_task(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="session")
def tiny_ner_teacher_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_tiny_token_teacher(tmp_path_factory.mktemp("ner-teacher") / "teacher", tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_tagger_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_tiny_token_student(tmp_path_factory.mktemp("tagger") / "soft_repr", tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_factorised_tagger_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """tiny_tagger_dir's tagger with (V, 8) x (8, 16) factorised embeddings."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_token_student(tmp_path_factory.mktemp("tagger-factorised") / "soft_repr", tiny_bert_dir, embed_rank=8)


@pytest.fixture(scope="module")
def evaluated_ner_work_dir(tmp_path_factory, tiny_bert_dir, tiny_ner_teacher_dir, tiny_tagger_dir) -> Path:
    """A token work_dir after evaluate (tracking off): data, teacher, a trained soft+repr tagger, eval/.
    Module-scoped: every test module that asks for it gets its own."""
    import torch

    from components import evaluate

    torch.set_num_threads(1)
    root = make_ner_work_dir(tmp_path_factory.mktemp("ner-work"), tiny_bert_dir, {}, teacher=tiny_ner_teacher_dir)
    shutil.copytree(tiny_tagger_dir, root / "student" / "soft_repr")
    evaluate.run(ner_cfg(root, None, student={"baseline": False}))
    return root
