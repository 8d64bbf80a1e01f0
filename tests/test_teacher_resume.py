"""finetune-teacher resumes after kill -9: epoch checkpoints beside the output (full Trainer
state), picked up only when made with the same settings, gone once the output is written. On CPU
the resumed teacher is bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components import finetune_teacher
from components.lib.settings.config import PROJECT_ROOT, PipelineConfig
from components.lib.training import finetune as F
from tests.helpers import write_tiny_task

torch.set_num_threads(1)
EPOCHS = 6


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return write_tiny_task(tmp_path_factory.mktemp("resume-task"), train=32, dev=8, test=2, transfer=2, seed=1)


def _raw(work: Path, task: Path, model: Path, **teacher) -> dict:
    # patience 2: save_total_limit 3 < EPOCHS, so checkpoints rotate while the best one must survive
    return {"work_dir": str(work), "data": {"output_dir": str(task)},
            "teacher": {"model": str(model), "lr": 3e-3, "epochs": EPOCHS, "batch_size": 8, "patience": 2,
                        "num_threads": 1, **teacher},
            "tracking": {"enabled": False}}


def _kill_after_first_checkpoint(raw: dict, ckpt_dir: Path) -> list[str]:
    """Run the step in a subprocess, SIGKILL it as soon as one checkpoint is complete; the
    checkpoints left (complete or torn)."""
    sets = [f"{k}.{s}={v}" if isinstance(d, dict) else f"{k}={d}"
            for k, d in raw.items() for s, v in (d.items() if isinstance(d, dict) else [(None, d)])]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "components.finetune_teacher", *sum((["--set", s] for s in sets), [])],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(ckpt_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "fine-tuning ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in ckpt_dir.glob("checkpoint-*"))


def _resumed_epoch(caplog) -> int | None:
    found = [re.search(r"resuming teacher fine-tuning from epoch (\d+) of", r.getMessage()) for r in caplog.records]
    return next((int(m.group(1)) for m in found if m), None)


def test_killed_finetuning_resumes_and_equals_an_uninterrupted_run(tmp_path, task, tiny_bert_dir, caplog):
    raw = _raw(tmp_path / "killed", task, tiny_bert_dir)
    cfg = PipelineConfig.model_validate(raw)
    ckpt_dir = F.checkpoint_dir(cfg.teacher_dir)
    assert ckpt_dir.parent == cfg.teacher_dir.parent  # beside the output, not in a temp dir
    left = _kill_after_first_checkpoint(raw, ckpt_dir)
    assert left and not cfg.teacher_dir.exists()  # killed before the output was published
    shutil.copytree(ckpt_dir, tmp_path / "kept")  # for the settings-changed run below

    caplog.set_level(logging.INFO, logger="distilflow.finetune_teacher")
    resumed = finetune_teacher.run(cfg)
    done = _resumed_epoch(caplog)
    assert done is not None and 1 <= done < EPOCHS, [r.getMessage() for r in caplog.records]
    assert resumed.epochs_resumed == done and f"checkpoint-{12 * done}" in left  # 96 examples / 8 = 12 steps an epoch
    assert not ckpt_dir.exists()  # the output is complete: nothing left to resume
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert (cfg.teacher_dir / name).exists(), name

    clean = PipelineConfig.model_validate(_raw(tmp_path / "clean", task, tiny_bert_dir))
    ref = finetune_teacher.run(clean)
    assert ref.epochs_resumed == 0
    got, want = (json.loads((c.teacher_dir / "metrics.json").read_text()) for c in (cfg, clean))
    assert got["history"] == want["history"] and got["best_epoch"] == want["best_epoch"]
    assert resumed.dev_accuracy == ref.dev_accuracy
    # bit-exact on CPU: same optimizer/scheduler/RNG state, same batches, same weights
    assert (cfg.teacher_dir / "model.safetensors").read_bytes() == (clean.teacher_dir / "model.safetensors").read_bytes()

    # other settings: the kept checkpoints are not resumed, the step starts over and says so
    other = PipelineConfig.model_validate(_raw(tmp_path / "other", task, tiny_bert_dir, lr=2e-3))
    shutil.copytree(tmp_path / "kept", F.checkpoint_dir(other.teacher_dir))
    caplog.clear()
    again = finetune_teacher.run(other)
    assert again.epochs_resumed == 0 and _resumed_epoch(caplog) is None
    assert sum("made with other settings" in r.getMessage() and "starting over" in r.getMessage() for r in caplog.records) == 1
    assert not F.checkpoint_dir(other.teacher_dir).exists()


def test_a_run_killed_after_early_stopping_trains_no_further(tmp_path, task, tiny_bert_dir, caplog):
    """Killed between its last checkpoint and the output (restoring the best epoch, scoring dev,
    saving): the rerun must only restore the best epoch, not train on past the stop."""
    from safetensors.torch import load_file
    from transformers import set_seed

    from components.finetune_teacher import sequence
    from components.lib.contracts import data
    from components.lib.models import teacher as T

    cfg = PipelineConfig.model_validate(_raw(tmp_path, task, tiny_bert_dir))
    train, dev = (data.read_labeled(cfg.data_dir / f"{s}.parquet") for s in ("train", "dev"))
    set_seed(cfg.teacher.seed)  # as the step does
    model, tok = T.load_teacher(tiny_bert_dir, label_names=train.label_names)
    fingerprint = F.run_fingerprint(cfg, [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"], tiny_bert_dir, model)
    # the whole fit, checkpoints and all: what a process killed right after it leaves on disk
    trainer, history, ex_per_s, _ = finetune_teacher.fit(cfg, sequence, model, tok, train, dev, F.checkpoint_dir(cfg.teacher_dir),
                                                        fingerprint)
    stopped = len(history)
    assert stopped < EPOCHS  # early stopping fired
    # examples/s counts the epochs trained, not the planned ones (transformers 5 scales its figure by the steps run)
    runtime = next(r["train_runtime"] for r in trainer.state.log_history if "train_runtime" in r)
    assert ex_per_s == pytest.approx(stopped * len(train.table) / runtime, rel=1e-2)  # HF rounds both figures

    caplog.set_level(logging.INFO, logger="distilflow.finetune_teacher")
    res = finetune_teacher.run(cfg)
    assert _resumed_epoch(caplog) == stopped and any("early stopping had fired" in r.getMessage() for r in caplog.records)
    assert res.epochs_run == res.epochs_resumed == stopped  # no epoch trained past the stop
    assert res.train_examples_per_s == 0.0  # and none trained by this process
    saved = load_file(cfg.teacher_dir / "model.safetensors")
    best = trainer.model.state_dict()
    assert all(torch.equal(saved[k], best[k]) for k in saved)  # the best epoch's weights, as the fit restored them
    assert not F.checkpoint_dir(cfg.teacher_dir).exists()
