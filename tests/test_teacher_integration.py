"""The real default teacher: fine-tune the packaged all-MiniLM-L6-v2 briefly on BBC News documents,
log it to a sqlite MLflow store, and pseudo-label a few hundred documents from `runs:/<id>/teacher`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components import finetune_teacher, pseudo_label
from components.lib.contracts import data
from components.lib.settings.config import PipelineConfig
from components.lib.sources.assets import bbc_news_dir

pytestmark = pytest.mark.integration


def _bbc_task(out, train=8, dev=4, transfer=40):
    """train/dev/transfer Parquet from the first documents of each BBC News class."""
    root = bbc_news_dir()
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    split = {"train": ([], [], []), "dev": ([], [], []), "transfer": ([], [], [])}
    for label, name in enumerate(names):
        files = sorted((root / name).glob("*.txt"))[: train + dev + transfer]
        for i, f in enumerate(files):
            part = "train" if i < train else "dev" if i < train + dev else "transfer"
            ids, texts, labels = split[part]
            ids.append(f"{name}-{f.stem}")
            texts.append(" ".join(f.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(label)
    for part in ("train", "dev"):
        data.write_table(data.labeled_table(*split[part], names), out / f"{part}.parquet")
    ids, texts, _ = split["transfer"]
    data.write_table(data.transfer_table(ids, texts), out / "transfer.parquet", row_group_rows=64)
    return names


def test_minilm_finetune_and_pseudo_label(tmp_path):
    torch.set_num_threads(1)  # on a shared 2-core runner, 2 threads were 5-7x slower per step
    names = _bbc_task(tmp_path / "data")
    cfg = PipelineConfig.model_validate({
        "work_dir": str(tmp_path / "work"),
        "data": {"output_dir": str(tmp_path / "data")},
        "teacher": {"lr": 3e-4, "epochs": 3, "batch_size": 8, "max_length": 48, "patience": 2, "num_threads": 1},
        "transfer": {"batch_size": 32, "max_length": 48, "chunk_rows": 128, "num_threads": 1},
        "tracking": {"experiment": "teacher-integration"},
    })
    ft = finetune_teacher.run(cfg)
    assert ft.label_names == names and ft.params > 22_000_000
    assert ft.dev_accuracy > 0.5  # 5 classes: chance is 0.2
    cfg = cfg.with_overrides({"transfer.teacher": ft.model_uri})
    res = pseudo_label.run(cfg)
    assert res.rows == 200 and res.examples_per_s > 0 and res.mlflow_run_id
    table, meta = data.read_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    assert meta["label_names"] == names and meta["repr_dim"] == 384
    assert meta["teacher_digest"] == data.sha256_file(cfg.teacher_dir / "model.safetensors")
    # the teacher agrees with the true class of most held-out documents
    truth = np.array([names.index(i.rsplit("-", 1)[0]) for i in table.column("id").to_pylist()])
    assert (table.column("teacher_label").to_numpy() == truth).mean() > 0.5
