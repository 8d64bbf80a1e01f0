"""distill-student for sequence classification: one label per text, the student max-pools its
states (SequenceHead). The hooks of hooks.DistillHooks, for the driver in __init__.py: the rows
(texts in student ids with the gold labels, the teacher's labels, logits and [CLS]/mean
representations), the loss per phase target (losses.repr_loss, soft_loss, hard_ce on the (B, C)
logits and (B, R) projection) and the dev score, accuracy (ties to the lower dev loss).

Reads data_dir/{train,dev}.parquet and pseudo_dir/pseudo.parquet (the pseudo contract of
lib/contracts/data.py); token ids are cached as tokens-<key>.npz.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.distill_student.hooks import Pieces
from components.lib.contracts import data
from components.lib.core import losses
from components.lib.core.errors import DataError
from components.lib.core.student import BiLSTMStudent
from components.lib.core.torch_utils import length_batches
from components.lib.models.student_io import pad_batch, tokenize_ids
from components.lib.training.distill import DistillResult, Phase, cache_key, ragged, unragged

log = logging.getLogger("distill-student")

NOUN = "student"
METRIC = "dev_accuracy"
HEADLINE = "dev accuracy"
SCORES = ("dev_accuracy", "dev_loss")
LOGGED = ("dev_accuracy",)
RECORDED: dict[str, str] = {}  # the task is the default one: its runs name none
TEXTS = "text"
read_split = data.read_labeled
read_transfer = data.read_transfer


@dataclass
class Rows:
    """Training rows in student ids, with whichever targets the phase needs."""

    seqs: list[np.ndarray]
    labels: np.ndarray | None = None  # (N,) int64
    logits: np.ndarray | None = None  # (N, C) float32
    reprs: np.ndarray | None = None  # (N, R) float32

    def subset(self, idx: np.ndarray) -> Rows:
        pick = lambda xs: None if xs is None else xs[idx]  # noqa: E731
        return Rows([self.seqs[i] for i in idx], pick(self.labels), pick(self.logits), pick(self.reprs))


# ---------------------------------------------------------------- inputs

def read_pseudo(path: Path, with_repr: bool, label_names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    cols = ["text", "teacher_label", "teacher_logits"] + (["teacher_repr"] if with_repr else [])
    pseudo, meta = data.read_pseudo(path, columns=cols)
    if meta["num_labels"] != len(label_names) or meta.get("label_names", label_names) != label_names:
        raise DataError(f"{path}: teacher labels {meta.get('label_names', meta['num_labels'])} do not match the train split's {label_names}")
    targets = {"labels": pseudo.column("teacher_label").to_numpy().astype(np.int64),
               "logits": data.fixed_list_to_numpy(pseudo.column("teacher_logits"))}
    if with_repr:
        targets["reprs"] = data.fixed_list_to_numpy(pseudo.column("teacher_repr"), np.float32)
    return pseudo.column("text").to_pylist(), targets


def cached_token_ids(
    cache_dir: Path, tokenizer, max_length: int, texts: dict[str, list[str]], sources: list[Path],
) -> dict[str, list[np.ndarray]]:
    """Teacher piece ids per split, tokenised once and kept as ragged int32 arrays in an .npz."""
    path = cache_dir / f"tokens-{cache_key(tokenizer, max_length, sources)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: unragged(z[f"{name}_values"], z[f"{name}_offsets"]) for name in texts}
    out: dict[str, list[np.ndarray]] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, split_texts in texts.items():
        t0 = time.perf_counter()
        out[name] = tokenize_ids(tokenizer, split_texts, max_length)
        arrays[f"{name}_values"], arrays[f"{name}_offsets"] = ragged(out[name])
        log.info("tokenised %s: %d texts, %.0f texts/s", name, len(split_texts), len(split_texts) / max(time.perf_counter() - t0, 1e-9))
    with data.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return out


def teacher_pieces(cache_dir: Path, tokenizer, max_length: int, texts: dict[str, list[str]], sources: list[Path]) -> Pieces:
    return {name: (ids, None) for name, ids in cached_token_ids(cache_dir, tokenizer, max_length, texts, sources).items()}


def labeled_rows(split: data.Labeled, seqs: list[np.ndarray], firsts: None, decoding: str) -> Rows:
    """A labeled split's rows (`decoding` is the tagger's: a class needs none)."""
    return Rows(seqs, labels=split.table.column("label").to_numpy().astype(np.int64))


def transfer_rows(seqs: list[np.ndarray], firsts: None, targets: dict[str, np.ndarray]) -> Rows:
    return Rows(seqs, **targets)


def hard_pool(transfer: Rows, train: Rows) -> Rows:
    return Rows(transfer.seqs + train.seqs, labels=np.concatenate([transfer.labels, train.labels]))


# ---------------------------------------------------------------- loss and dev score

def to_device_batch(rows: Rows, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([rows.seqs[i] for i in idx])  # (B, T), (B, T)
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def phase_loss(phase: Phase, model: BiLSTMStudent, rows: Rows, idx: np.ndarray, s) -> torch.Tensor:
    device = model.device
    logits, projected = model(*to_device_batch(rows, idx, device))  # (B, C), (B, R)
    if phase.target == "repr":
        return losses.repr_loss(s.repr_loss, projected, torch.from_numpy(rows.reprs[idx]).to(device))
    if phase.target == "soft":
        return losses.soft_loss(s.soft_loss, logits, torch.from_numpy(rows.logits[idx]).to(device), s.temperature)
    return losses.hard_ce(logits, torch.from_numpy(rows.labels[idx]).to(device))


@torch.no_grad()
def evaluate_phase(phase: Phase, model: BiLSTMStudent, dev: Rows, val: Rows | None, s) -> dict[str, float]:
    """Dev accuracy and loss; for stage 1 the held-out transfer rows' repr loss decides instead."""
    model.eval()
    out: dict[str, float] = {}
    pred = np.zeros(len(dev.seqs), dtype=np.int64)
    loss_sum = 0.0
    for idx in length_batches(np.array([len(x) for x in dev.seqs]), 256):
        logits = model.logits(*to_device_batch(dev, idx, model.device)).float().cpu()
        pred[idx] = logits.argmax(-1).numpy()
        loss_sum += float(losses.hard_ce(logits, torch.from_numpy(dev.labels[idx]))) * len(idx)
    out["dev_accuracy"] = float((pred == dev.labels).mean())
    out["dev_loss"] = loss_sum / len(dev.seqs)
    if phase.target == "repr" and val is not None and len(val.seqs):
        total = 0.0
        for idx in length_batches(np.array([len(x) for x in val.seqs]), 256):
            total += float(phase_loss(phase, model, val, idx, s)) * len(idx)
        out["val_repr_loss"] = total / len(val.seqs)
    # Higher is better. Ties in accuracy (small dev sets) go to the lower dev loss.
    out["score"] = -out["val_repr_loss"] if "val_repr_loss" in out else out["dev_accuracy"] - 1e-6 * out["dev_loss"]
    return out


def result(final: dict[str, float], **fields) -> DistillResult:
    return DistillResult(dev_accuracy=final["dev_accuracy"], **fields)
