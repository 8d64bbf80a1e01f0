"""distill-student for token classification: a per-word BiLSTM tagger, trained in the classifier's
stages (representation -> logits -> labels) with the same gradual unfreezing, checkpoints and
early stopping (lib/training/distill.py: plan, train_phases), only with per-word targets and losses.

The student reads the teacher's word pieces of each sentence (tokens.encode_words with the
teacher tokenizer, cut to student.max_length, mapped through the trimmed VocabMap: exactly
student_io.word_ids). A word's target and output live on its first piece. Per-word targets:
  labels   gold tags of data_dir/train.parquet                        (labels-only, stage 3)
  hard     the teacher's tags over the transfer set + the gold train tags        (hard)
  soft     the teacher's per-word logits, MSE or KL with temperature             (stage 2)
  repr     the teacher's per-word state of layer transfer.layer vs the projected state (stage 1)
Every loss is a mean over real words (losses.token_*): pads, later sub-pieces, special tokens and
words past the student's max_length carry no target. Dev selection is entity F1 on the dev split
(ner_metrics.entity_scores, cut-off words predicted O); stage 1 early-stops on the repr loss of a
held-out slice of the transfer set, as for the classifier. The test split is never read.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from components.lib.contracts import data, token_data
from components.lib.core import losses
from components.lib.core.decode import decode_words, outside_index
from components.lib.core.errors import DataError
from components.lib.core.ner_metrics import entity_scores
from components.lib.core.student import BiLSTMStudent
from components.lib.core.task import Task
from components.lib.core.tokens import encode_words
from components.lib.core.torch_utils import count_parameters, length_batches
from components.lib.models.student_io import pad_batch, save_student
from components.lib.settings.config import PipelineConfig, StudentMode
from components.lib.tracking import runs as tracking
from components.lib.training import distill as training
from components.lib.training.distill import DistillResult, Phase

log = logging.getLogger("distill-student")
TASK = Task.token_classification


class TokenDistillResult(DistillResult):
    """dev_accuracy is the dev token (word) accuracy; dev_f1/precision/recall are entity scores."""

    task: str = TASK.value
    dev_f1: float
    dev_precision: float
    dev_recall: float


@dataclass
class WordRows:
    """Sentences in student ids with per-word targets kept flat over all words of the set."""

    seqs: list[np.ndarray]  # student piece ids per sentence (int32)
    pos: list[np.ndarray]  # (k_i,) distinct first-piece positions of the sentence's trained words
    word: list[np.ndarray]  # (k_i,) index of each of those words into the flat targets below
    labels: np.ndarray | None = None  # (W,) int64 gold or teacher tag per word
    logits: np.ndarray | None = None  # (W, C) float32 teacher logits per word
    reprs: np.ndarray | None = None  # (W, R) float16 teacher state per word (float32 per batch)
    firsts: list[np.ndarray] | None = None  # dev: first piece of every covered word (duplicates kept)
    gold: list[list[str]] | None = None  # dev: the tag names of every word, cut-off words included
    names: list[str] | None = None  # dev: tag names in index order

    def subset(self, idx: np.ndarray) -> WordRows:
        # The flat targets are shared: the word indices stay valid.
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return replace(self, seqs=pick(self.seqs), pos=pick(self.pos), word=pick(self.word),
                       firsts=pick(self.firsts), gold=pick(self.gold))


def word_rows(seqs: list[np.ndarray], covered: list[np.ndarray], offsets: np.ndarray, **targets) -> WordRows:
    """Sentence i's words are flat targets offsets[i]:offsets[i+1]; it trains on the leading words
    that both the targets and the student's pieces cover. Two words on one piece (a word the
    tokenizer gave no piece) train once, with the first word's target, as tokens.piece_labels."""
    pos, word = [], []
    for i, fp in enumerate(covered):
        n = min(len(fp), int(offsets[i + 1] - offsets[i]))
        p, first = np.unique(fp[:n], return_index=True)
        pos.append(p.astype(np.int64))
        word.append(offsets[i] + first.astype(np.int64))
    return WordRows(seqs, pos, word, **targets)


def cached_word_ids(
    cache_dir: Path, tokenizer, max_length: int, sentences: dict[str, list[list[str]]], sources: list[Path],
) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Per split: teacher piece ids per sentence and the first piece of each covered word, computed
    once (tokens.encode_words) and kept as ragged int32 arrays in an .npz."""
    path = cache_dir / f"words-{training.cache_key(tokenizer, max_length, sources)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: (training.unragged(z[f"{name}_ids"], z[f"{name}_ids_offsets"]),
                           [x.astype(np.int64) for x in training.unragged(z[f"{name}_firsts"], z[f"{name}_firsts_offsets"])])
                    for name in sentences}
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, sents in sentences.items():
        t0 = time.perf_counter()
        enc = encode_words(tokenizer, sents, max_length)
        ids = [x.astype(np.int32) for x in enc.input_ids]
        firsts = [enc.first_piece[i][: enc.covered(i)] for i in range(len(sents))]
        out[name] = (ids, firsts)
        arrays[f"{name}_ids"], arrays[f"{name}_ids_offsets"] = training.ragged(ids)
        arrays[f"{name}_firsts"], arrays[f"{name}_firsts_offsets"] = training.ragged(firsts)
        log.info("tokenised %s: %d sentences, %.0f sentences/s", name, len(sents), len(sents) / max(time.perf_counter() - t0, 1e-9))
    with data.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return out


# ---------------------------------------------------------------- loss and dev score

def word_batch(rows: WordRows, idx: np.ndarray, device: torch.device):
    """-> input_ids (B, T), attention_mask (B, T), words (B, T) bool, and (b, t, w): batch row,
    piece position and flat target index of every trained word in the batch."""
    ids, mask = pad_batch([rows.seqs[i] for i in idx])  # (B, T), (B, T)
    b = torch.from_numpy(np.concatenate([np.full(len(rows.pos[i]), r, dtype=np.int64) for r, i in enumerate(idx)]))
    t = torch.from_numpy(np.concatenate([rows.pos[i] for i in idx]))
    w = np.concatenate([rows.word[i] for i in idx])
    words = torch.zeros(ids.shape, dtype=torch.bool)
    words[b, t] = True
    return ids.to(device), mask.to(device), words.to(device), (b, t, w)


def scatter_words(values: np.ndarray, where: tuple, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(W, ...) flat per-word values -> (B, T, ...) with each word's value at its first piece, 0 elsewhere."""
    b, t, w = where
    out = torch.zeros(shape + values.shape[1:], dtype=torch.float32 if values.dtype.kind == "f" else torch.long)
    out[b, t] = torch.from_numpy(values[w]).to(out.dtype)
    return out.to(device)


def word_loss(phase: Phase, model: BiLSTMStudent, rows: WordRows, idx: np.ndarray, s) -> torch.Tensor:
    device = model.classifier.weight.device
    ids, mask, words, where = word_batch(rows, idx, device)
    logits, projected = model(ids, mask)  # (B, T, C), (B, T, R)
    shape = tuple(ids.shape)
    if phase.target == "repr":
        return losses.token_repr_loss(s.repr_loss, projected, scatter_words(rows.reprs, where, shape, device), words)
    if phase.target == "soft":
        return losses.token_soft_loss(s.soft_loss, logits, scatter_words(rows.logits, where, shape, device), words, s.temperature)
    return losses.token_hard_ce(logits, scatter_words(rows.labels, where, shape, device), words)


@torch.no_grad()
def evaluate_words(phase: Phase, model: BiLSTMStudent, dev: WordRows, val: WordRows | None, s) -> dict[str, float]:
    """Dev entity F1 (+ precision, recall, word accuracy, gold-tag loss per word); for stage 1 the
    held-out transfer rows' per-word repr loss decides instead."""
    model.eval()
    device = model.classifier.weight.device
    outside = outside_index(dev.names)
    pred: list[list[str]] = [[] for _ in dev.seqs]
    loss_sum, n_words = 0.0, 0
    for idx in length_batches(np.array([len(x) for x in dev.seqs]), 256):
        ids, mask, words, where = word_batch(dev, idx, device)
        logits = model.logits(ids, mask).float()  # (B, T, C)
        host = logits.cpu().numpy()  # (B, T, C)
        for r, i in enumerate(idx):
            pred[i] = [dev.names[k] for k in decode_words(host[r, dev.firsts[i]], len(dev.gold[i]), outside)]
        k = int(words.sum())
        loss_sum += float(losses.token_hard_ce(logits, scatter_words(dev.labels, where, tuple(ids.shape), device), words)) * k
        n_words += k
    sc = entity_scores(dev.gold, pred)
    out = {"dev_f1": sc["f1"], "dev_precision": sc["precision"], "dev_recall": sc["recall"],
           "dev_token_accuracy": sc["token_accuracy"], "dev_loss": loss_sum / max(n_words, 1)}
    if phase.target == "repr" and val is not None and len(val.seqs):
        total, n = 0.0, 0
        for idx in length_batches(np.array([len(x) for x in val.seqs]), 256):
            k = sum(len(val.pos[i]) for i in idx)
            total += float(word_loss(phase, model, val, idx, s)) * k
            n += k
        out["val_repr_loss"] = total / max(n, 1)
    # Higher is better. Ties in F1 (small dev sets) go to the lower dev loss.
    out["score"] = -out["val_repr_loss"] if "val_repr_loss" in out else out["dev_f1"] - 1e-6 * out["dev_loss"]
    return out


# ---------------------------------------------------------------- the step

def _flat_tags(tbl: token_data.TokenLabeled) -> tuple[np.ndarray, np.ndarray]:
    return token_data.ragged_to_numpy(tbl.table.column("tags"), np.int64)


def _sentences(table) -> list[list[str]]:
    return table.column("tokens").to_pylist()


def _read_pseudo(path: Path, mode: StudentMode, label_names: list[str]):
    cols = ["tokens", "teacher_tags", "teacher_logits"] + (["teacher_repr"] if mode == StudentMode.soft_repr else [])
    pseudo, meta = token_data.read_token_pseudo(path, columns=cols)
    if meta["num_labels"] != len(label_names) or meta.get("label_names", label_names) != label_names:
        raise DataError(f"{path}: teacher tags {meta.get('label_names', meta['num_labels'])} do not match the train split's {label_names}")
    tags, offsets = token_data.ragged_to_numpy(pseudo.column("teacher_tags"), np.int64)
    targets = {"labels": tags}
    for name, col, dtype in (("logits", "teacher_logits", np.float32), ("reprs", "teacher_repr", np.float16)):
        if col in pseudo.column_names:
            targets[name], off = token_data.ragged_to_numpy(pseudo.column(col), dtype)
            if not np.array_equal(off, offsets):
                raise DataError(f"{path}: column '{col}' has a different number of words than 'teacher_tags' in some row")
    n_words = pc.list_value_length(pseudo.column("tokens")).to_numpy(zero_copy_only=False)
    if not np.array_equal(n_words, np.diff(offsets)):
        raise DataError(f"{path}: column 'teacher_tags' has a different number of words than 'tokens' in some row")
    return _sentences(pseudo), offsets, targets


def run(cfg: PipelineConfig, *, on_epoch: Callable[[dict], None] | None = None) -> TokenDistillResult:
    t_start = time.perf_counter()
    s, mode = cfg.student, StudentMode(cfg.student.mode)
    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    torch.manual_seed(s.seed)
    out_dir = cfg.student_dir(mode)
    train = token_data.read_token_labeled(cfg.data_dir / "train.parquet")
    dev = token_data.read_token_labeled(cfg.data_dir / "dev.parquet")
    if dev.label_names != train.label_names:
        raise DataError(f"{cfg.data_dir / 'dev.parquet'}: tag names {dev.label_names} differ from train's {train.label_names}")
    label_names = train.label_names
    sources = [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"]
    sentences = {"train": _sentences(train.table), "dev": _sentences(dev.table)}
    pseudo_offsets = pseudo_targets = None
    if mode != StudentMode.labels_only:
        pseudo_path = cfg.pseudo_dir / "pseudo.parquet"
        sentences["transfer"], pseudo_offsets, pseudo_targets = _read_pseudo(pseudo_path, mode, label_names)
        sources.append(pseudo_path)
    elif (cfg.data_dir / "transfer.parquet").exists():
        # The baseline's vocabulary comes from the same sentences as the distilled students'.
        sources.append(cfg.data_dir / "transfer.parquet")
        sentences["transfer"] = _sentences(token_data.read_token_transfer(cfg.data_dir / "transfer.parquet"))

    teacher_path = training.teacher_model_dir(cfg)
    tokenizer = training.teacher_tokenizer(teacher_path)
    pieces = cached_word_ids(out_dir.parent / ".cache", tokenizer, s.max_length, sentences, sources)
    vocab = training.trimmed_vocab(tokenizer, [ids for k, (ids, _) in pieces.items() if k != "dev"], s)
    seqs = {k: [vocab.encode(x) for x in ids] for k, (ids, _) in pieces.items()}
    teacher_matrix = training.teacher_embeddings(teacher_path)  # (V_teacher, H)
    repr_dim = int(pseudo_targets["reprs"].shape[1]) if pseudo_targets and "reprs" in pseudo_targets else teacher_matrix.shape[1]
    model, arch, device = training.new_student(s, vocab, teacher_matrix, repr_dim, len(label_names), TASK)

    train_tags, train_off = _flat_tags(train)
    dev_tags, dev_off = _flat_tags(dev)
    train_rows = word_rows(seqs["train"], pieces["train"][1], train_off, labels=train_tags)
    dev_rows = word_rows(seqs["dev"], pieces["dev"][1], dev_off, labels=dev_tags, firsts=pieces["dev"][1],
                         gold=[[label_names[t] for t in row] for row in dev.table.column("tags").to_pylist()], names=label_names)
    transfer = val = hard_rows = None
    if pseudo_targets is not None:
        transfer = word_rows(seqs["transfer"], pieces["transfer"][1], pseudo_offsets, **pseudo_targets)
        if mode == StudentMode.soft_repr:
            n_val = int(round(len(transfer.seqs) * s.transfer_val_fraction))
            order = np.random.default_rng(s.seed).permutation(len(transfer.seqs))
            transfer, val = transfer.subset(np.sort(order[n_val:])), transfer.subset(np.sort(order[:n_val]))
        if mode == StudentMode.hard:  # teacher tags over the transfer set + gold tags of train, one pool
            shift = len(transfer.labels)
            hard_rows = WordRows(transfer.seqs + train_rows.seqs, transfer.pos + train_rows.pos,
                                 transfer.word + [w + shift for w in train_rows.word],
                                 labels=np.concatenate([transfer.labels, train_rows.labels]))

    def data_for(phase: Phase) -> WordRows:
        return {"repr": transfer, "soft": transfer, "hard": hard_rows, "labels": train_rows}[phase.target]

    phases = training.plan(mode, s)
    fingerprint = training.run_fingerprint(s, sources, teacher_path, len(vocab))
    ckpt_path = training.checkpoint_path(out_dir)
    log.info("tagger %s on %s: %d params, vocab %d, phases %s", mode.value, device, count_parameters(model), len(vocab), [p.name for p in phases])
    with tracking.step_run(cfg, f"distill-student-{mode.value}") as tr:
        tr.log_params({"student": s.model_dump(mode="json"), "task": TASK, "vocab_size": len(vocab),
                       "parameters": count_parameters(model), "teacher": str(teacher_path), "train_rows": len(train_rows.seqs),
                       "transfer_rows": 0 if transfer is None else len(transfer.seqs)})

        def epoch_hook(rec: dict) -> None:
            keys = ("train_loss", "dev_f1", "dev_loss", "val_repr_loss", "examples_per_s")
            tr.log_metrics({f"{rec['phase']}.{k}": rec[k] for k in keys if k in rec} | {"dev_f1": rec["dev_f1"]}, step=rec["step"])
            if on_epoch is not None:
                on_epoch(rec)

        history = training.train_phases(model, phases, data_for, dev_rows, val, s, ckpt_path, fingerprint, epoch_hook,
                               loss_fn=word_loss, evaluate_fn=evaluate_words, metric="dev_f1")
        model.eval()
        final = evaluate_words(Phase("final", "labels", (), 0, None), model, dev_rows, None, s)
        seconds = time.perf_counter() - t_start
        metrics = {
            "mode": mode.value, "task": TASK, "dev_f1": final["dev_f1"], "dev_precision": final["dev_precision"],
            "dev_recall": final["dev_recall"], "dev_token_accuracy": final["dev_token_accuracy"], "dev_loss": final["dev_loss"],
            "parameters": count_parameters(model), "embedding_parameters": model.embeddings.weight.numel(),
            "vocab_size": len(vocab), "seconds": seconds, "epochs": len(history),
            "phases": training.phase_summary(phases, history), "history": history,
        }
        with data.atomic_dir(out_dir) as tmp:
            save_student(tmp, model, arch, vocab, tokenizer, label_names, mode.value, s.max_length, training.teacher_info(teacher_path, teacher_matrix))
            data.write_json(tmp / "metrics.json", metrics)
        tr.log_metrics({"final.dev_f1": final["dev_f1"], "final.dev_precision": final["dev_precision"],
                        "final.dev_recall": final["dev_recall"], "parameters": metrics["parameters"],
                        "vocab_size": len(vocab), "seconds": seconds})
        tr.log_artifacts(out_dir, "student")
        tr.set_tags({"distilflow.student_mode": mode.value, "distilflow.task": TASK})
        run_id = tr.run_id
    shutil.rmtree(ckpt_path.parent, ignore_errors=True)  # done: nothing to resume
    log.info("tagger %s: dev entity F1 %.4f in %.1f s -> %s", mode.value, final["dev_f1"], seconds, out_dir)
    return TokenDistillResult(
        mode=mode.value, student_dir=str(out_dir), dev_accuracy=final["dev_token_accuracy"], dev_f1=final["dev_f1"],
        dev_precision=final["dev_precision"], dev_recall=final["dev_recall"], parameters=metrics["parameters"],
        vocab_size=len(vocab), epochs=len(history), seconds=round(seconds, 3), run_id=run_id)
