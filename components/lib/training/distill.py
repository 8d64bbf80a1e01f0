"""Student training machinery both tasks share: the staged plan (representation -> logits ->
labels) with gradual unfreezing, the epoch loop with early stopping on dev, per-epoch
checkpoints that resume to the same result, the token-id cache keys, and the student's set-up
(teacher tokenizer and embeddings, trimmed vocabulary, SVD-initialised BiLSTM).

The task modules (components/distill_student/) bring the rows, the loss and the dev score:
train_phases(loss_fn=..., evaluate_fn=..., metric=...).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.core.student import (
    BiLSTMStudent,
    StudentArch,
    VocabMap,
    encoder_groups,
    svd_embeddings,
    svd_factors,
)
from components.lib.core.task import Task
from components.lib.settings.config import PipelineConfig, StudentMode
from components.lib.tracking import runs as tracking

log = logging.getLogger("distill-student")


class DistillResult(BaseModel):
    mode: str
    student_dir: str
    dev_accuracy: float
    parameters: int
    vocab_size: int
    epochs: int
    seconds: float
    run_id: str | None = None


@dataclass(frozen=True)
class Phase:
    name: str  # e.g. "soft.2" = stage 2, second unfreezing step
    target: str  # repr | soft | hard | labels: which loss and which rows
    groups: tuple[str, ...]  # parameter groups trained
    max_epochs: int
    patience: int | None  # None: the whole budget, keep the best dev epoch


def unfreeze_steps(layers: int) -> list[tuple[str, ...]]:
    """Trainable groups of each gradual-unfreezing step, top-down, one encoder layer at a time:
    (classifier), (classifier, encoder.L), ..., (classifier, encoder.L..1, embeddings). One layer:
    (classifier), (classifier, encoder), (classifier, encoder, embeddings)."""
    encoder = encoder_groups(layers)
    return [("classifier",) + encoder[:k] for k in range(len(encoder) + 1)] + [("classifier", *encoder, "embeddings")]


def plan(mode: StudentMode, s) -> list[Phase]:
    unfreeze = unfreeze_steps(s.layers)
    steps = lambda stage, target, epochs: [  # noqa: E731
        Phase(f"{stage}.{i + 1}", target, groups, epochs, s.patience) for i, groups in enumerate(unfreeze)
    ]
    if mode == StudentMode.labels_only:
        phases = [Phase("labels", "labels", unfreeze[-1], s.label_epochs, None)]
    elif mode == StudentMode.hard:
        phases = steps("hard", "hard", s.soft_epochs)
    else:
        phases = steps("soft", "soft", s.soft_epochs) + steps("labels", "labels", s.label_epochs)
        if mode == StudentMode.soft_repr and s.repr_unfreeze == "gradual":
            # The repr loss reads `projected` = dense(features): it reaches dense, the encoder and the
            # embeddings, never the classifier's own weights. Every step trains a group it reaches
            # ("classifier" holds dense: "repr.1" fits the projection onto frozen features), so none
            # is skipped; the classifier gets no gradient (grad None: AdamW leaves it, decay too).
            phases = steps("repr", "repr", s.repr_epochs) + phases
        elif mode == StudentMode.soft_repr:
            phases = [Phase("repr", "repr", unfreeze[-1], s.repr_epochs, s.patience)] + phases
    return [p for p in phases if p.max_epochs > 0]



# ---------------------------------------------------------------- inputs

def teacher_model_dir(cfg: PipelineConfig) -> Path:
    path = Path(tracking.resolve_teacher(cfg))
    if not (path / "config.json").exists():  # the SVD init needs the embedding matrix on disk
        raise UserError(f"{path}: teacher model dir not found (run finetune-teacher or set transfer.teacher)")
    return path


def teacher_embeddings(path: Path) -> np.ndarray:
    """(V_teacher, H) input embedding matrix of the teacher."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path))
    return model.get_input_embeddings().weight.detach().float().numpy()


def ragged(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    values = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return values.astype(np.int32), offsets


def unragged(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def cache_key(tokenizer, max_length: int, sources: list[Path]) -> str:
    """Names a token-id cache file: the tokenizer's vocabulary and class, max_length, the inputs' bytes."""
    vocab_digest = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(json.dumps(
        [vocab_digest, type(tokenizer).__name__, max_length, [data.sha256_file(p) for p in sources]]
    ).encode()).hexdigest()[:20]



# ---------------------------------------------------------------- training

def shuffled_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed but random: sort within chunks of 50 batches of a permutation, shuffle batches."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(perm), chunk):
        part = perm[i : i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def set_trainable(model: BiLSTMStudent, groups: tuple[str, ...]) -> list[torch.nn.Parameter]:
    trainable = []
    named = model.param_groups()
    if unknown := set(groups) - set(named):  # a plan made for another depth would silently freeze them
        raise ValueError(f"no parameter groups {sorted(unknown)} in this student (groups: {list(named)})")
    for name, params in named.items():
        for p in params:
            p.requires_grad_(name in groups)
            if name in groups:
                trainable.append(p)
    return trainable


def optimizer(model: BiLSTMStudent, phase: Phase, steps: int, s):
    opt = torch.optim.AdamW(set_trainable(model, phase.groups), lr=s.lr, weight_decay=s.weight_decay)
    # Linear decay to 0 over the phase's budget of steps.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / max(1, steps)))
    return opt, sched


def train_phases(
    model: BiLSTMStudent, phases: list[Phase], data_for: Callable[[Phase], Any], dev: Any, val: Any | None,
    s, ckpt_path: Path, fingerprint: str, on_epoch: Callable[[dict], None] | None = None,
    *, loss_fn: Callable, evaluate_fn: Callable, metric: str,
) -> list[dict]:
    """Run the phases in order with per-epoch checkpoints; returns the per-epoch history.

    loss_fn(phase, model, rows, idx, s) -> scalar loss and evaluate_fn(phase, model, dev, val, s) ->
    {metric, "score" (higher is better), ...} come from the task (per text or per word); rows and
    dev only need .seqs here."""
    state = {"phase": 0, "epoch": 0, "history": [], "best": None, "best_state": None, "bad": 0}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False, map_location=model.device)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            state = saved
            log.info("resuming from %s: phase %d, epoch %d", ckpt_path, state["phase"], state["epoch"])
        else:
            log.info("ignoring checkpoint %s: made with other inputs or settings", ckpt_path)

    def save(extra: dict) -> None:
        with data.atomic_path(ckpt_path) as tmp:
            torch.save({**state, **extra, "fingerprint": fingerprint, "model": model.state_dict()}, tmp)

    for pi in range(state["phase"], len(phases)):
        phase = phases[pi]
        rows = data_for(phase)
        lengths = np.array([len(x) for x in rows.seqs])
        steps_per_epoch = math.ceil(len(rows.seqs) / s.batch_size)
        opt, sched = optimizer(model, phase, steps_per_epoch * phase.max_epochs, s)
        if state["epoch"] > 0:  # resuming inside this phase
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        else:  # the weights entering the phase are a candidate too: a phase may only help
            first = evaluate_fn(phase, model, dev, val, s)
            state.update(best=first["score"], best_state=copy.deepcopy(model.state_dict()), bad=0)
            log.info("%s: start %s %.4f (%d rows, groups %s)", phase.name, metric, first[metric], len(rows.seqs), "+".join(phase.groups))
        stopped = phase.patience is not None and state["bad"] >= phase.patience  # resumed after its last epoch
        for epoch in range(state["epoch"], 0 if stopped else phase.max_epochs):
            # Seeds derived from (seed, phase, epoch): a resumed run draws the same batches and dropout.
            torch.manual_seed(s.seed * 1_000_003 + pi * 1009 + epoch)
            rng = np.random.default_rng([s.seed, pi, epoch])
            model.train()
            t0, total, n = time.perf_counter(), 0.0, 0
            for idx in tqdm(shuffled_batches(lengths, s.batch_size, rng), desc=f"{phase.name} epoch {epoch + 1}", leave=False, disable=None):
                loss = loss_fn(phase, model, rows, idx, s)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 5.0)
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            seconds = time.perf_counter() - t0
            ev = evaluate_fn(phase, model, dev, val, s)
            improved = ev["score"] > state["best"]
            if improved:
                state.update(best=ev["score"], best_state=copy.deepcopy(model.state_dict()), bad=0)
            else:
                state["bad"] += 1
            record = {"phase": phase.name, "target": phase.target, "epoch": epoch + 1, "train_loss": total / max(n, 1),
                      "examples_per_s": n / max(seconds, 1e-9), "seconds": seconds, **ev, "improved": improved}
            state["history"].append(record)
            log.info("%s epoch %d: loss %.4f %s %.4f %s %.0f ex/s", phase.name, epoch + 1, record["train_loss"],
                     metric, ev[metric], f"val_repr_loss {ev['val_repr_loss']:.4f}" if "val_repr_loss" in ev else "", record["examples_per_s"])
            state["epoch"] = epoch + 1
            stop = phase.patience is not None and state["bad"] >= phase.patience
            save({"opt": opt.state_dict(), "sched": sched.state_dict()})
            if on_epoch is not None:
                on_epoch({**record, "step": len(state["history"])})
            if stop:
                break
        model.load_state_dict(state["best_state"])  # the phase ends on its best epoch
        state.update(phase=pi + 1, epoch=0, best=None, best_state=None, bad=0)
        save({})
    return state["history"]


# ---------------------------------------------------------------- set-up

def teacher_tokenizer(teacher_path: Path):
    """The teacher's tokenizer, also when the teacher is an MLflow transformers model (models:/...,
    runs:/...), which keeps it apart from the weights in components/tokenizer/."""
    from transformers import AutoTokenizer

    from components.lib.models.teacher import tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(teacher_path)))
    if tokenizer.pad_token_id is None or tokenizer.unk_token_id is None:
        raise UserError(f"{teacher_path}: the teacher tokenizer needs pad and unk tokens (a WordPiece/BERT-like encoder)")
    return tokenizer


def trimmed_vocab(tokenizer, splits: list[list[np.ndarray]], s) -> VocabMap:
    """Pieces of the given splits' teacher ids (train + transfer, never dev); the specials are always kept."""
    counts = np.bincount(np.concatenate([np.concatenate(v) for v in splits]), minlength=len(tokenizer))
    return VocabMap.from_counts(counts, s.min_count, s.max_vocab, list(tokenizer.all_special_ids),
                                tokenizer.pad_token_id, tokenizer.unk_token_id)


def new_student(s, vocab: VocabMap, teacher_matrix: np.ndarray, repr_dim: int, num_labels: int,
                task: Task = Task.sequence_classification) -> tuple[BiLSTMStudent, StudentArch, torch.device]:
    """The student, embeddings from the SVD of the teacher's rows of the kept pieces (one matrix, or
    with student.embed_rank its best rank-r factorisation), on its device."""
    arch = StudentArch(len(vocab), s.embed_dim, s.hidden, s.layers, s.dropout, repr_dim, num_labels, Task(task).value,
                       s.embed_rank)
    rows = teacher_matrix[vocab.teacher_ids]  # (S, H)
    emb = (None if s.embed_init == "random" else svd_embeddings(rows, s.embed_dim) if s.embed_rank is None
           else svd_factors(rows, s.embed_dim, s.embed_rank))
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else ("cpu" if s.device == "auto" else s.device))
    return BiLSTMStudent(arch, emb).to(device), arch, device


def run_fingerprint(s, sources: list[Path], teacher_path: Path, vocab_size: int, decoding: str) -> str:
    """What a checkpoint must have been made with to be resumed (`decoding`: its dev scores')."""
    return hashlib.sha256(json.dumps([s.model_dump(mode="json"), [data.sha256_file(p) for p in sources],
                                      str(teacher_path), vocab_size, decoding]).encode()).hexdigest()


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.ckpt" / "checkpoint.pt"


def phase_summary(phases: list[Phase], history: list[dict]) -> list[dict]:
    return [{"name": p.name, "target": p.target, "groups": list(p.groups), "epochs": sum(h["phase"] == p.name for h in history),
             "best_score": max((h["score"] for h in history if h["phase"] == p.name), default=None)} for p in phases]


def teacher_info(teacher_path: Path, teacher_matrix: np.ndarray) -> dict:
    return {"path": str(teacher_path), "hidden_size": int(teacher_matrix.shape[1]), "vocab_size": int(teacher_matrix.shape[0])}


