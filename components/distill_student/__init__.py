"""distill-student: train the BiLSTM student in stages, representation -> logits -> labels.

Modes (student.mode):
  labels-only  CE on the labeled train split; the best dev epoch of a fixed budget (the baseline)
  hard         CE on the teacher's hard labels over the transfer set + the labeled train split
  soft         stage 2 logit matching on the transfer set (MSE or KL) -> stage 3 CE on train
  soft+repr    stage 1 projected representation -> teacher repr (MSE or cosine) -> stage 2 -> stage 3
Stages 2 and 3 (and hard) unfreeze top-down: classifier/dense, + BiLSTM, + embeddings; every
unfreezing step early-stops on the task's dev score and restores its best weights. Stage 1
early-stops on its loss over a held-out slice of the transfer set (the dev split has no teacher
representation).

run() is the step for every task: it reads data_dir/{train,dev}.parquet, pseudo_dir/pseudo.parquet
(labels-only: data_dir/transfer.parquet, for the vocabulary only) and the teacher's tokenizer and
embedding matrix (never the test split), and writes student_dir(mode) atomically. Token ids are
computed once per (tokenizer, max_length, inputs) and cached under the student root; a checkpoint
after every epoch lets a crashed run resume where it stopped, with the same result. The plan, the
epoch loop, checkpoints and the student's set-up are lib/training/distill.py's.

What differs by task is a hooks module (hooks.DistillHooks), TASKS[cfg.task]: sequence.py (one
label per text) and tokens.py (one tag per word, a per-word tagger).

    python -m components.distill_student --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.distill_student import sequence, tokens
from components.distill_student.hooks import DistillHooks, TaskRows
from components.distill_student.sequence import DistillResult
from components.distill_student.tokens import TokenDistillResult
from components.lib.contracts import data
from components.lib.core.student import BiLSTMStudent, StudentArch, VocabMap
from components.lib.core.task import Task
from components.lib.core.torch_utils import count_parameters
from components.lib.models.student_io import save_student
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig, StudentMode
from components.lib.tracking import runs as tracking
from components.lib.training.distill import (
    Phase,
    checkpoint_path,
    new_student,
    phase_summary,
    plan,
    run_fingerprint,
    teacher_embeddings,
    teacher_info,
    teacher_model_dir,
    teacher_tokenizer,
    train_phases,
    trimmed_vocab,
)

__all__ = ["run", "main", "TASKS", "DistillResult", "TokenDistillResult"]

log = logging.getLogger("distill-student")

TASKS: dict[Task, DistillHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}


@dataclass
class Inputs:
    """What the step reads: the labeled splits and the teacher's targets over the transfer set."""

    splits: dict[str, Any]  # "train", "dev": the labeled splits (same label names)
    texts: dict[str, list]  # "train", "dev"[, "transfer"]: the rows the teacher's tokenizer reads
    sources: list[Path]  # the files behind texts: the token cache's key, the checkpoint's fingerprint
    targets: dict[str, np.ndarray] | None  # the teacher's, over the transfer rows; None: labels-only

    @property
    def label_names(self) -> list[str]:
        return self.splits["train"].label_names


@dataclass
class StudentSetup:
    """The teacher's tokenizer and embeddings, and the student made from them."""

    teacher_path: Path
    tokenizer: Any
    teacher_matrix: np.ndarray  # (V_teacher, H) the teacher's input embeddings
    vocab: VocabMap
    model: BiLSTMStudent
    arch: StudentArch
    device: torch.device
    seqs: dict[str, list[np.ndarray]]  # per split: student piece ids per row
    firsts: dict[str, list[np.ndarray] | None]  # per split: first piece of each covered word (texts: None)


@dataclass
class PhaseRows:
    """The rows each phase target trains on (for_phase: train_phases' data_for)."""

    train: TaskRows
    dev: TaskRows
    transfer: TaskRows | None  # stages 1 and 2: the transfer set, less the held-out slice
    val: TaskRows | None  # soft+repr: the held-out slice of the transfer set (stage 1's early stopping)
    hard: TaskRows | None  # hard: the teacher's labels over the transfer set + the gold train labels

    def for_phase(self, phase: Phase) -> TaskRows:
        return {"repr": self.transfer, "soft": self.transfer, "hard": self.hard, "labels": self.train}[phase.target]


def read_inputs(cfg: PipelineConfig, task: DistillHooks, mode: StudentMode) -> Inputs:
    splits = data.read_splits(cfg.data_dir, ["train", "dev"], task.read_split)
    texts = {name: split.table.column(task.TEXTS).to_pylist() for name, split in splits.items()}
    sources = [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"]
    targets = None
    if mode != StudentMode.labels_only:
        pseudo_path = cfg.pseudo_dir / "pseudo.parquet"
        texts["transfer"], targets = task.read_pseudo(pseudo_path, mode == StudentMode.soft_repr, splits["train"].label_names)
        sources.append(pseudo_path)
    elif (cfg.data_dir / "transfer.parquet").exists():
        # The baseline trains on labels only, but its vocabulary comes from the same texts as the
        # distilled students', so the comparison isolates the training signal.
        sources.append(cfg.data_dir / "transfer.parquet")
        texts["transfer"] = task.read_transfer(cfg.data_dir / "transfer.parquet").column(task.TEXTS).to_pylist()
    return Inputs(splits, texts, sources, targets)


def set_up(cfg: PipelineConfig, task: DistillHooks, inputs: Inputs, out_dir: Path) -> StudentSetup:
    """The teacher's tokenizer and pieces, the trimmed vocabulary and the SVD-initialised student."""
    s = cfg.student
    teacher_path = teacher_model_dir(cfg)
    tokenizer = teacher_tokenizer(teacher_path)
    pieces = task.teacher_pieces(out_dir.parent / ".cache", tokenizer, s.max_length, inputs.texts, inputs.sources)
    # Trimmed vocabulary: pieces of the train + transfer texts; the specials are always kept.
    vocab = trimmed_vocab(tokenizer, [ids for name, (ids, _) in pieces.items() if name != "dev"], s)
    seqs = {name: [vocab.encode(x) for x in ids] for name, (ids, _) in pieces.items()}
    teacher_matrix = teacher_embeddings(teacher_path)  # (V_teacher, H)
    reprs = (inputs.targets or {}).get("reprs")  # (N or W, R)
    repr_dim = int(reprs.shape[1]) if reprs is not None else teacher_matrix.shape[1]
    model, arch, device = new_student(s, vocab, teacher_matrix, repr_dim, len(inputs.label_names), cfg.task)
    return StudentSetup(teacher_path, tokenizer, teacher_matrix, vocab, model, arch, device, seqs,
                   {name: firsts for name, (_, firsts) in pieces.items()})


def phase_rows(task: DistillHooks, inputs: Inputs, st: StudentSetup, mode: StudentMode, s, decoding: str) -> PhaseRows:
    train = task.labeled_rows(inputs.splits["train"], st.seqs["train"], st.firsts["train"], decoding)
    dev = task.labeled_rows(inputs.splits["dev"], st.seqs["dev"], st.firsts["dev"], decoding)
    transfer = val = hard = None
    if inputs.targets is not None:
        transfer = task.transfer_rows(st.seqs["transfer"], st.firsts["transfer"], inputs.targets)
        if mode == StudentMode.soft_repr:
            n_val = int(round(len(transfer.seqs) * s.transfer_val_fraction))
            order = np.random.default_rng(s.seed).permutation(len(transfer.seqs))
            transfer, val = transfer.subset(np.sort(order[n_val:])), transfer.subset(np.sort(order[:n_val]))
        if mode == StudentMode.hard:
            hard = task.hard_pool(transfer, train)
    return PhaseRows(train, dev, transfer, val, hard)


def epoch_logger(tr, metric: str, on_epoch: Callable[[dict], None] | None) -> Callable[[dict], None]:
    def epoch_hook(rec: dict) -> None:
        keys = ("train_loss", metric, "dev_loss", "val_repr_loss", "examples_per_s")
        tr.log_metrics({f"{rec['phase']}.{k}": rec[k] for k in keys if k in rec} | {metric: rec[metric]}, step=rec["step"])
        if on_epoch is not None:
            on_epoch(rec)

    return epoch_hook


def write_student(out_dir: Path, task: DistillHooks, mode: StudentMode, st: StudentSetup, inputs: Inputs,
                  final: dict[str, float], phases: list[Phase], history: list[dict], seconds: float, s) -> dict:
    """student_dir(mode), atomically: the student (student_io.save_student) and its metrics.json."""
    metrics = {
        "mode": mode.value, **task.RECORDED, **{k: final[k] for k in task.SCORES},
        "parameters": count_parameters(st.model), "embedding_parameters": count_parameters(st.model.encoder.embeddings),
        "vocab_size": len(st.vocab), "seconds": seconds, "epochs": len(history),
        "phases": phase_summary(phases, history), "history": history,
    }
    with data.atomic_dir(out_dir) as tmp:
        save_student(tmp, st.model, st.arch, st.vocab, st.tokenizer, inputs.label_names, mode.value, s.max_length,
                     teacher_info(st.teacher_path, st.teacher_matrix),
                     {"max_vocab": s.max_vocab, "min_count": s.min_count, "counted_on": "train + transfer"})
        data.write_json(tmp / "metrics.json", metrics)
    return metrics


def run(cfg: PipelineConfig, *, on_epoch: Callable[[dict], None] | None = None) -> DistillResult | TokenDistillResult:
    t_start = time.perf_counter()
    task, s, mode = TASKS[cfg.task], cfg.student, StudentMode(cfg.student.mode)
    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    out_dir = cfg.student_dir(mode)
    inputs = read_inputs(cfg, task, mode)
    st = set_up(cfg, task, inputs, out_dir)
    rows = phase_rows(task, inputs, st, mode, s, cfg.evaluate.decoding)
    phases = plan(mode, s)
    fingerprint = run_fingerprint(s, inputs.sources, st.teacher_path, len(st.vocab), cfg.evaluate.decoding)
    ckpt_path = checkpoint_path(out_dir)
    log.info("%s %s on %s: %d params, vocab %d, phases %s", task.NOUN, mode.value, st.device, count_parameters(st.model),
             len(st.vocab), [p.name for p in phases])
    with tracking.step_run(cfg, f"distill-student-{mode.value}") as tr:
        tr.log_params({"student": s.model_dump(mode="json"), **task.RECORDED, "vocab_size": len(st.vocab),
                       "parameters": count_parameters(st.model), "teacher": str(st.teacher_path),
                       "train_rows": len(rows.train.seqs), "transfer_rows": 0 if rows.transfer is None else len(rows.transfer.seqs)})
        history = train_phases(st.model, phases, rows.for_phase, rows.dev, rows.val, s, ckpt_path, fingerprint,
                               epoch_logger(tr, task.METRIC, on_epoch),
                               loss_fn=task.phase_loss, evaluate_fn=task.evaluate_phase, metric=task.METRIC)
        st.model.eval()
        final = task.evaluate_phase(Phase("final", "labels", (), 0, None), st.model, rows.dev, None, s)
        seconds = time.perf_counter() - t_start
        metrics = write_student(out_dir, task, mode, st, inputs, final, phases, history, seconds, s)
        tr.log_metrics({**{f"final.{k}": final[k] for k in task.LOGGED}, "parameters": metrics["parameters"],
                        "vocab_size": len(st.vocab), "seconds": seconds})
        tr.log_artifacts(out_dir, "student")
        tr.set_tags({"distilflow.student_mode": mode.value, **{f"distilflow.{k}": v for k, v in task.RECORDED.items()}})
        run_id = tr.run_id
    shutil.rmtree(ckpt_path.parent, ignore_errors=True)  # done: nothing to resume
    log.info("%s %s: %s %.4f in %.1f s -> %s", task.NOUN, mode.value, task.HEADLINE, final[task.METRIC], seconds, out_dir)
    return task.result(final, mode=mode.value, student_dir=str(out_dir), parameters=metrics["parameters"],
                       vocab_size=len(st.vocab), epochs=len(history), seconds=round(seconds, 3), run_id=run_id)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Distil the teacher into a BiLSTM student (representation -> logits -> labels)", argv)
