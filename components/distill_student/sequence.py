"""distill-student for sequence classification: train the BiLSTM student in stages, representation -> logits -> labels.

Modes (student.mode):
  labels-only  CE on the labeled train split; the best dev epoch of a fixed budget (the baseline)
  hard         CE on the teacher's hard labels over the transfer set + the labeled train split
  soft         stage 2 logit matching on the transfer set (MSE or KL) -> stage 3 CE on train
  soft+repr    stage 1 projected representation -> teacher repr (MSE or cosine) -> stage 2 -> stage 3
Stages 2 and 3 (and hard) unfreeze top-down: classifier/dense, + BiLSTM, + embeddings; every
unfreezing step early-stops on dev accuracy and restores its best weights. Stage 1 early-stops on
its loss over a held-out slice of the transfer set (the dev split has no teacher representation).

Reads data_dir/{train,dev}.parquet, pseudo_dir/pseudo.parquet (labels-only: data_dir/transfer.parquet,
for the vocabulary only) and the teacher's tokenizer and
embedding matrix (never the test split); writes student_dir(mode) atomically. Token ids are
computed once per (tokenizer, max_length, inputs) and cached under the student root; a
checkpoint after every epoch lets a crashed run resume where it stopped, with the same result.

The plan, the epoch loop, checkpoints and the student's set-up are lib/training/distill.py's, shared with
the per-word tagger of token classification (distill_student/tokens.py).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.lib.contracts import data
from components.lib.core import losses
from components.lib.core.errors import DataError
from components.lib.core.student import BiLSTMStudent
from components.lib.core.torch_utils import count_parameters, length_batches
from components.lib.models.student_io import pad_batch, save_student, tokenize_ids
from components.lib.settings.config import PipelineConfig, StudentMode
from components.lib.tracking import runs as tracking
from components.lib.training.distill import (
    DistillResult,
    Phase,
    cache_key,
    checkpoint_path,
    new_student,
    phase_summary,
    plan,
    ragged,
    run_fingerprint,
    teacher_embeddings,
    teacher_info,
    teacher_model_dir,
    teacher_tokenizer,
    train_phases,
    trimmed_vocab,
    unragged,
)

log = logging.getLogger("distill-student")

@dataclass
class Rows:
    """Training rows in student ids, with whichever targets the phase needs."""

    seqs: list[np.ndarray]
    labels: np.ndarray | None = None  # (N,) int64
    logits: np.ndarray | None = None  # (N, C) float32
    reprs: np.ndarray | None = None  # (N, R) float32


# ---------------------------------------------------------------- inputs

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


# ---------------------------------------------------------------- training

def to_device_batch(rows: Rows, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([rows.seqs[i] for i in idx])  # (B, T), (B, T)
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def phase_loss(phase: Phase, model: BiLSTMStudent, rows: Rows, idx: np.ndarray, s) -> torch.Tensor:
    device = model.classifier.weight.device
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
        logits = model.logits(*to_device_batch(dev, idx, model.classifier.weight.device)).float().cpu()
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


# ---------------------------------------------------------------- the step

def _rows_from_labeled(tbl: data.Labeled, seqs: list[np.ndarray]) -> Rows:
    return Rows(seqs, labels=tbl.table.column("label").to_numpy().astype(np.int64))


def run(cfg: PipelineConfig, *, on_epoch: Callable[[dict], None] | None = None) -> DistillResult:
    t_start = time.perf_counter()
    s, mode = cfg.student, StudentMode(cfg.student.mode)
    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    out_dir = cfg.student_dir(mode)
    train = data.read_labeled(cfg.data_dir / "train.parquet")
    dev = data.read_labeled(cfg.data_dir / "dev.parquet")
    if dev.label_names != train.label_names:
        raise DataError(f"{cfg.data_dir / 'dev.parquet'}: label names {dev.label_names} differ from train's {train.label_names}")
    label_names = train.label_names
    sources = [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"]
    texts = {"train": train.table.column("text").to_pylist(), "dev": dev.table.column("text").to_pylist()}
    pseudo = None
    if mode != StudentMode.labels_only:
        pseudo_path = cfg.pseudo_dir / "pseudo.parquet"
        cols = ["text", "teacher_label", "teacher_logits"] + (["teacher_repr"] if mode == StudentMode.soft_repr else [])
        pseudo, meta = data.read_pseudo(pseudo_path, columns=cols)
        if meta["num_labels"] != len(label_names) or meta.get("label_names", label_names) != label_names:
            raise DataError(f"{pseudo_path}: teacher labels {meta.get('label_names', meta['num_labels'])} do not match the train split's {label_names}")
        sources.append(pseudo_path)
        texts["transfer"] = pseudo.column("text").to_pylist()
    elif (cfg.data_dir / "transfer.parquet").exists():
        # The baseline trains on labels only, but its vocabulary comes from the same texts as the
        # distilled students', so the comparison isolates the training signal.
        sources.append(cfg.data_dir / "transfer.parquet")
        texts["transfer"] = data.read_transfer(cfg.data_dir / "transfer.parquet").column("text").to_pylist()

    teacher_path = teacher_model_dir(cfg)
    tokenizer = teacher_tokenizer(teacher_path)
    cache_dir = out_dir.parent / ".cache"
    teacher_ids = cached_token_ids(cache_dir, tokenizer, s.max_length, texts, sources)

    # Trimmed vocabulary: pieces of the train + transfer texts; the specials are always kept.
    vocab = trimmed_vocab(tokenizer, [v for k, v in teacher_ids.items() if k != "dev"], s)
    seqs = {k: [vocab.encode(x) for x in v] for k, v in teacher_ids.items()}
    teacher_matrix = teacher_embeddings(teacher_path)  # (V_teacher, H)
    repr_dim = int(pseudo.schema.field("teacher_repr").type.list_size) if pseudo is not None and "teacher_repr" in pseudo.column_names else teacher_matrix.shape[1]
    model, arch, device = new_student(s, vocab, teacher_matrix, repr_dim, len(label_names))

    train_rows, dev_rows = _rows_from_labeled(train, seqs["train"]), _rows_from_labeled(dev, seqs["dev"])
    transfer = val = None
    if pseudo is not None:
        transfer = Rows(seqs["transfer"], labels=pseudo.column("teacher_label").to_numpy().astype(np.int64),
                        logits=data.fixed_list_to_numpy(pseudo.column("teacher_logits")))
        if mode == StudentMode.soft_repr:
            transfer.reprs = data.fixed_list_to_numpy(pseudo.column("teacher_repr"), np.float32)
            n_val = int(round(len(transfer.seqs) * s.transfer_val_fraction))
            order = np.random.default_rng(s.seed).permutation(len(transfer.seqs))
            val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            pick = lambda r, ix: Rows([r.seqs[i] for i in ix], r.labels[ix], r.logits[ix], r.reprs[ix])  # noqa: E731
            transfer, val = pick(transfer, fit_idx), pick(transfer, val_idx)
    hard_rows = None
    if mode == StudentMode.hard:
        hard_rows = Rows(transfer.seqs + train_rows.seqs, labels=np.concatenate([transfer.labels, train_rows.labels]))

    def data_for(phase: Phase) -> Rows:
        return {"repr": transfer, "soft": transfer, "hard": hard_rows, "labels": train_rows}[phase.target]

    phases = plan(mode, s)
    fingerprint = run_fingerprint(s, sources, teacher_path, len(vocab))
    ckpt_path = checkpoint_path(out_dir)
    log.info("student %s on %s: %d params, vocab %d, phases %s", mode.value, device, count_parameters(model), len(vocab), [p.name for p in phases])
    with tracking.step_run(cfg, f"distill-student-{mode.value}") as tr:
        tr.log_params({"student": s.model_dump(mode="json"), "vocab_size": len(vocab), "parameters": count_parameters(model),
                       "teacher": str(teacher_path), "train_rows": len(train_rows.seqs),
                       "transfer_rows": 0 if transfer is None else len(transfer.seqs)})

        def epoch_hook(rec: dict) -> None:
            keys = ("train_loss", "dev_accuracy", "dev_loss", "val_repr_loss", "examples_per_s")
            tr.log_metrics({f"{rec['phase']}.{k}": rec[k] for k in keys if k in rec} | {"dev_accuracy": rec["dev_accuracy"]}, step=rec["step"])
            if on_epoch is not None:
                on_epoch(rec)

        history = train_phases(model, phases, data_for, dev_rows, val, s, ckpt_path, fingerprint, epoch_hook,
                               loss_fn=phase_loss, evaluate_fn=evaluate_phase, metric="dev_accuracy")
        model.eval()
        final = evaluate_phase(Phase("final", "labels", (), 0, None), model, dev_rows, None, s)
        seconds = time.perf_counter() - t_start
        metrics = {
            "mode": mode.value, "dev_accuracy": final["dev_accuracy"], "dev_loss": final["dev_loss"],
            "parameters": count_parameters(model), "embedding_parameters": model.embeddings.weight.numel(),
            "vocab_size": len(vocab), "seconds": seconds, "epochs": len(history),
            "phases": phase_summary(phases, history),
            "history": history,
        }
        with data.atomic_dir(out_dir) as tmp:
            save_student(tmp, model, arch, vocab, tokenizer, label_names, mode.value, s.max_length, teacher_info(teacher_path, teacher_matrix))
            data.write_json(tmp / "metrics.json", metrics)
        tr.log_metrics({"final.dev_accuracy": final["dev_accuracy"], "parameters": metrics["parameters"],
                        "vocab_size": len(vocab), "seconds": seconds})
        tr.log_artifacts(out_dir, "student")
        tr.set_tags({"distilflow.student_mode": mode.value})
        run_id = tr.run_id
    shutil.rmtree(ckpt_path.parent, ignore_errors=True)  # done: nothing to resume
    log.info("student %s: dev accuracy %.4f in %.1f s -> %s", mode.value, final["dev_accuracy"], seconds, out_dir)
    return DistillResult(mode=mode.value, student_dir=str(out_dir), dev_accuracy=final["dev_accuracy"], parameters=metrics["parameters"],
                         vocab_size=len(vocab), epochs=len(history), seconds=round(seconds, 3), run_id=run_id)

