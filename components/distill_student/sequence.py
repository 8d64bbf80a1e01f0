"""distill-student: train the BiLSTM student in stages, representation -> logits -> labels.

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

task: token-classification goes to components/distill_tokens.py (a per-word tagger), which reuses
plan(), train_phases() (with its own loss and dev score) and the set-up helpers below.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from components.lib import data, losses, tracking
from components.lib.cli import step_main
from components.lib.config import PipelineConfig, StudentMode
from components.lib.errors import DataError, UserError
from components.lib.student import BiLSTMStudent, StudentArch, VocabMap, count_parameters, svd_embeddings
from components.lib.student_io import length_batches, pad_batch, save_student, tokenize_ids

log = logging.getLogger("distill-student")
UNFREEZE = (("classifier",), ("classifier", "encoder"), ("classifier", "encoder", "embeddings"))
ALL_GROUPS = UNFREEZE[-1]


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


@dataclass
class Rows:
    """Training rows in student ids, with whichever targets the phase needs."""

    seqs: list[np.ndarray]
    labels: np.ndarray | None = None  # (N,) int64
    logits: np.ndarray | None = None  # (N, C) float32
    reprs: np.ndarray | None = None  # (N, R) float32


def plan(mode: StudentMode, s) -> list[Phase]:
    steps = lambda stage, target, epochs: [  # noqa: E731
        Phase(f"{stage}.{i + 1}", target, groups, epochs, s.patience) for i, groups in enumerate(UNFREEZE)
    ]
    if mode == StudentMode.labels_only:
        phases = [Phase("labels", "labels", ALL_GROUPS, s.label_epochs, None)]
    elif mode == StudentMode.hard:
        phases = steps("hard", "hard", s.soft_epochs)
    else:
        phases = steps("soft", "soft", s.soft_epochs) + steps("labels", "labels", s.label_epochs)
        if mode == StudentMode.soft_repr:
            phases = [Phase("repr", "repr", ALL_GROUPS, s.repr_epochs, s.patience)] + phases
    return [p for p in phases if p.max_epochs > 0]


# ---------------------------------------------------------------- inputs

def _teacher_path(cfg: PipelineConfig) -> Path:
    path = Path(tracking.resolve_teacher(cfg))
    if not (path / "config.json").exists():  # the SVD init needs the embedding matrix on disk
        raise UserError(f"{path}: teacher model dir not found (run finetune-teacher or set transfer.teacher)")
    return path


def _teacher_embeddings(path: Path) -> np.ndarray:
    """(V_teacher, H) input embedding matrix of the teacher."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path))
    return model.get_input_embeddings().weight.detach().float().numpy()


def _ragged(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    values = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return values.astype(np.int32), offsets


def _unragged(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def cache_key(tokenizer, max_length: int, sources: list[Path]) -> str:
    """Names a token-id cache file: the tokenizer's vocabulary and class, max_length, the inputs' bytes."""
    vocab_digest = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(json.dumps(
        [vocab_digest, type(tokenizer).__name__, max_length, [data.sha256_file(p) for p in sources]]
    ).encode()).hexdigest()[:20]


def cached_token_ids(
    cache_dir: Path, tokenizer, max_length: int, texts: dict[str, list[str]], sources: list[Path],
) -> dict[str, list[np.ndarray]]:
    """Teacher piece ids per split, tokenised once and kept as ragged int32 arrays in an .npz."""
    path = cache_dir / f"tokens-{cache_key(tokenizer, max_length, sources)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: _unragged(z[f"{name}_values"], z[f"{name}_offsets"]) for name in texts}
    out: dict[str, list[np.ndarray]] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, split_texts in texts.items():
        t0 = time.perf_counter()
        out[name] = tokenize_ids(tokenizer, split_texts, max_length)
        arrays[f"{name}_values"], arrays[f"{name}_offsets"] = _ragged(out[name])
        log.info("tokenised %s: %d texts, %.0f texts/s", name, len(split_texts), len(split_texts) / max(time.perf_counter() - t0, 1e-9))
    with data.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return out


# ---------------------------------------------------------------- training

def _shuffled_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed but random: sort within chunks of 50 batches of a permutation, shuffle batches."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(perm), chunk):
        part = perm[i : i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batch(rows: Rows, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([rows.seqs[i] for i in idx])  # (B, T), (B, T)
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def _phase_loss(phase: Phase, model: BiLSTMStudent, rows: Rows, idx: np.ndarray, s) -> torch.Tensor:
    device = model.classifier.weight.device
    logits, projected = model(*_batch(rows, idx, device))  # (B, C), (B, R)
    if phase.target == "repr":
        return losses.repr_loss(s.repr_loss, projected, torch.from_numpy(rows.reprs[idx]).to(device))
    if phase.target == "soft":
        return losses.soft_loss(s.soft_loss, logits, torch.from_numpy(rows.logits[idx]).to(device), s.temperature)
    return losses.hard_ce(logits, torch.from_numpy(rows.labels[idx]).to(device))


@torch.no_grad()
def _evaluate(phase: Phase, model: BiLSTMStudent, dev: Rows, val: Rows | None, s) -> dict[str, float]:
    """Dev accuracy and loss; for stage 1 the held-out transfer rows' repr loss decides instead."""
    model.eval()
    out: dict[str, float] = {}
    pred = np.zeros(len(dev.seqs), dtype=np.int64)
    loss_sum = 0.0
    for idx in length_batches(np.array([len(x) for x in dev.seqs]), 256):
        logits = model.logits(*_batch(dev, idx, model.classifier.weight.device)).float().cpu()
        pred[idx] = logits.argmax(-1).numpy()
        loss_sum += float(losses.hard_ce(logits, torch.from_numpy(dev.labels[idx]))) * len(idx)
    out["dev_accuracy"] = float((pred == dev.labels).mean())
    out["dev_loss"] = loss_sum / len(dev.seqs)
    if phase.target == "repr" and val is not None and len(val.seqs):
        total = 0.0
        for idx in length_batches(np.array([len(x) for x in val.seqs]), 256):
            total += float(_phase_loss(phase, model, val, idx, s)) * len(idx)
        out["val_repr_loss"] = total / len(val.seqs)
    # Higher is better. Ties in accuracy (small dev sets) go to the lower dev loss.
    out["score"] = -out["val_repr_loss"] if "val_repr_loss" in out else out["dev_accuracy"] - 1e-6 * out["dev_loss"]
    return out


def _set_trainable(model: BiLSTMStudent, groups: tuple[str, ...]) -> list[torch.nn.Parameter]:
    trainable = []
    for name, params in model.param_groups().items():
        for p in params:
            p.requires_grad_(name in groups)
            if name in groups:
                trainable.append(p)
    return trainable


def _optimizer(model: BiLSTMStudent, phase: Phase, steps: int, s):
    opt = torch.optim.AdamW(_set_trainable(model, phase.groups), lr=s.lr, weight_decay=s.weight_decay)
    # Linear decay to 0 over the phase's budget of steps.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / max(1, steps)))
    return opt, sched


def train_phases(
    model: BiLSTMStudent, phases: list[Phase], data_for: Callable[[Phase], Rows], dev: Rows, val: Rows | None,
    s, ckpt_path: Path, fingerprint: str, on_epoch: Callable[[dict], None] | None = None,
    *, loss_fn: Callable | None = None, evaluate_fn: Callable | None = None, metric: str = "dev_accuracy",
) -> list[dict]:
    """Run the phases in order with per-epoch checkpoints; returns the per-epoch history.

    loss_fn(phase, model, rows, idx, s) -> scalar loss and evaluate_fn(phase, model, dev, val, s) ->
    {metric, "score" (higher is better), ...} default to the sequence-classification ones; the
    token-classification student passes its per-word versions (rows then only need .seqs)."""
    loss_fn = loss_fn or _phase_loss
    evaluate_fn = evaluate_fn or _evaluate
    state = {"phase": 0, "epoch": 0, "history": [], "best": None, "best_state": None, "bad": 0}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False, map_location=model.classifier.weight.device)
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
        opt, sched = _optimizer(model, phase, steps_per_epoch * phase.max_epochs, s)
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
            for idx in tqdm(_shuffled_batches(lengths, s.batch_size, rng), desc=f"{phase.name} epoch {epoch + 1}", leave=False, disable=None):
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


# ---------------------------------------------------------------- shared set-up (also used by distill_tokens)

def teacher_tokenizer(teacher_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_path))
    if tokenizer.pad_token_id is None or tokenizer.unk_token_id is None:
        raise UserError(f"{teacher_path}: the teacher tokenizer needs pad and unk tokens (a WordPiece/BERT-like encoder)")
    return tokenizer


def trimmed_vocab(tokenizer, splits: list[list[np.ndarray]], s) -> VocabMap:
    """Pieces of the given splits' teacher ids (train + transfer, never dev); the specials are always kept."""
    counts = np.bincount(np.concatenate([np.concatenate(v) for v in splits]), minlength=len(tokenizer))
    return VocabMap.from_counts(counts, s.min_count, s.max_vocab, list(tokenizer.all_special_ids),
                                tokenizer.pad_token_id, tokenizer.unk_token_id)


def new_student(s, vocab: VocabMap, teacher_matrix: np.ndarray, repr_dim: int, num_labels: int,
                task: str = "sequence-classification") -> tuple[BiLSTMStudent, StudentArch, torch.device]:
    """The student, embeddings from the SVD of the teacher's rows of the kept pieces, on its device."""
    arch = StudentArch(len(vocab), s.embed_dim, s.hidden, s.layers, s.dropout, repr_dim, num_labels, task)
    emb = svd_embeddings(teacher_matrix[vocab.teacher_ids], s.embed_dim) if s.embed_init == "svd" else None
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else ("cpu" if s.device == "auto" else s.device))
    return BiLSTMStudent(arch, emb).to(device), arch, device


def run_fingerprint(s, sources: list[Path], teacher_path: Path, vocab_size: int) -> str:
    """What a checkpoint must have been made with to be resumed."""
    return hashlib.sha256(json.dumps([s.model_dump(mode="json"), [data.sha256_file(p) for p in sources],
                                      str(teacher_path), vocab_size]).encode()).hexdigest()


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.ckpt" / "checkpoint.pt"


def phase_summary(phases: list[Phase], history: list[dict]) -> list[dict]:
    return [{"name": p.name, "target": p.target, "groups": list(p.groups), "epochs": sum(h["phase"] == p.name for h in history),
             "best_score": max((h["score"] for h in history if h["phase"] == p.name), default=None)} for p in phases]


def teacher_info(teacher_path: Path, teacher_matrix: np.ndarray) -> dict:
    return {"path": str(teacher_path), "hidden_size": int(teacher_matrix.shape[1]), "vocab_size": int(teacher_matrix.shape[0])}


# ---------------------------------------------------------------- the step

def _rows_from_labeled(tbl: data.Labeled, seqs: list[np.ndarray]) -> Rows:
    return Rows(seqs, labels=tbl.table.column("label").to_numpy().astype(np.int64))


def run(cfg: PipelineConfig, *, on_epoch: Callable[[dict], None] | None = None) -> DistillResult:
    if cfg.is_token_task:
        from components import distill_tokens

        return distill_tokens.run(cfg, on_epoch=on_epoch)
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

    teacher_path = _teacher_path(cfg)
    tokenizer = teacher_tokenizer(teacher_path)
    cache_dir = out_dir.parent / ".cache"
    teacher_ids = cached_token_ids(cache_dir, tokenizer, s.max_length, texts, sources)

    # Trimmed vocabulary: pieces of the train + transfer texts; the specials are always kept.
    vocab = trimmed_vocab(tokenizer, [v for k, v in teacher_ids.items() if k != "dev"], s)
    seqs = {k: [vocab.encode(x) for x in v] for k, v in teacher_ids.items()}
    teacher_matrix = _teacher_embeddings(teacher_path)  # (V_teacher, H)
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

        history = train_phases(model, phases, data_for, dev_rows, val, s, ckpt_path, fingerprint, epoch_hook)
        model.eval()
        final = _evaluate(Phase("final", "labels", (), 0, None), model, dev_rows, None, s)
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


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Distil the teacher into a BiLSTM student (representation -> logits -> labels)", argv)


if __name__ == "__main__":
    raise SystemExit(main())
