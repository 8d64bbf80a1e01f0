"""distill-student for token classification: a per-word BiLSTM tagger (TokenHead: one output
per piece), trained in the classifier's stages with per-word targets and losses. The hooks of
hooks.DistillHooks, for the driver in __init__.py.

The student reads the teacher's word pieces of each sentence (tokens.encode_words with the
teacher tokenizer, cut to student.max_length, mapped through the trimmed VocabMap: exactly
student_io.word_ids). A word's target and output live on its first piece. Per-word targets:
  labels   gold tags of data_dir/train.parquet                        (labels-only, stage 3)
  hard     the teacher's tags over the transfer set + the gold train tags        (hard)
  soft     the teacher's per-word logits, MSE or KL with temperature             (stage 2)
  repr     the teacher's per-word state of layer transfer.layer vs the projected state (stage 1)
Every loss is a mean over real words (losses.token_*): pads, later sub-pieces, special tokens and
words past the student's max_length carry no target. Dev selection is entity F1 on the dev split
(ner_metrics.entity_scores, cut-off words predicted O, tags decoded by evaluate.decoding); stage 1 early-stops on the repr loss of a
held-out slice of the transfer set, as for the classifier. Piece ids are cached as words-<key>.npz.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from components.lib.contracts import data, token_data
from components.lib.core import losses
from components.lib.core.decode import decoder
from components.lib.core.errors import DataError
from components.lib.core.ner_metrics import entity_scores
from components.lib.core.student import BiLSTMStudent
from components.lib.core.task import Task
from components.lib.core.tokens import encode_words
from components.lib.core.torch_utils import length_batches
from components.lib.models.student_io import pad_batch
from components.lib.training import distill as training
from components.lib.training.distill import DistillResult, Phase

log = logging.getLogger("distill-student")
TASK = Task.token_classification

NOUN = "tagger"
METRIC = "dev_f1"
HEADLINE = "dev entity F1"
SCORES = ("dev_f1", "dev_precision", "dev_recall", "dev_token_accuracy", "dev_loss")
LOGGED = ("dev_f1", "dev_precision", "dev_recall")
RECORDED = {"task": TASK}
TEXTS = "tokens"
read_split = token_data.read_token_labeled
read_transfer = token_data.read_token_transfer


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
    # A labeled split's, for the dev score:
    firsts: list[np.ndarray] | None = None  # first piece of every covered word (duplicates kept)
    gold: list[list[str]] | None = None  # the tag names of every word, cut-off words included
    names: list[str] | None = None  # tag names in index order
    decoding: str | None = None  # how the dev score decodes tags (evaluate.decoding, core/decode.py)

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
    cache_dir: Path, tokenizer, max_length: int, texts: dict[str, list[list[str]]], sources: list[Path],
) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Per split of sentences (texts: lists of words): teacher piece ids per sentence and the first
    piece of each covered word, computed once (tokens.encode_words) and kept as ragged int32 arrays
    in an .npz."""
    path = cache_dir / f"words-{training.cache_key(tokenizer, max_length, sources)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: (training.unragged(z[f"{name}_ids"], z[f"{name}_ids_offsets"]),
                           [x.astype(np.int64) for x in training.unragged(z[f"{name}_firsts"], z[f"{name}_firsts_offsets"])])
                    for name in texts}
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, sents in texts.items():
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


teacher_pieces = cached_word_ids


def labeled_rows(split: token_data.TokenLabeled, seqs: list[np.ndarray], firsts: list[np.ndarray], decoding: str) -> WordRows:
    tags, offsets = token_data.ragged_to_numpy(split.table.column("tags"), np.int64)
    gold = [[split.label_names[t] for t in row] for row in split.table.column("tags").to_pylist()]
    return word_rows(seqs, firsts, offsets, labels=tags, firsts=firsts, gold=gold, names=split.label_names,
                     decoding=decoding)


def transfer_rows(seqs: list[np.ndarray], firsts: list[np.ndarray], targets: dict[str, np.ndarray]) -> WordRows:
    return word_rows(seqs, firsts, **targets)


def hard_pool(transfer: WordRows, train: WordRows) -> WordRows:
    shift = len(transfer.labels)  # train's words follow the transfer set's in the flat targets
    return WordRows(transfer.seqs + train.seqs, transfer.pos + train.pos, transfer.word + [w + shift for w in train.word],
                    labels=np.concatenate([transfer.labels, train.labels]))


def read_pseudo(path: Path, with_repr: bool, label_names: list[str]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """-> the sentences and the teacher's flat per-word targets with their `offsets` (sentence i:
    offsets[i]:offsets[i+1]), each column checked to hold one entry per word of its row."""
    cols = ["tokens", "teacher_tags", "teacher_logits"] + (["teacher_repr"] if with_repr else [])
    pseudo, meta = token_data.read_token_pseudo(path, columns=cols)
    if meta["num_labels"] != len(label_names) or meta.get("label_names", label_names) != label_names:
        raise DataError(f"{path}: teacher tags {meta.get('label_names', meta['num_labels'])} do not match the train split's {label_names}")
    tags, offsets = token_data.ragged_to_numpy(pseudo.column("teacher_tags"), np.int64)
    targets = {"offsets": offsets, "labels": tags}
    for name, col, dtype in (("logits", "teacher_logits", np.float32), ("reprs", "teacher_repr", np.float16)):
        if col in pseudo.column_names:
            targets[name], off = token_data.ragged_to_numpy(pseudo.column(col), dtype)
            if not np.array_equal(off, offsets):
                raise DataError(f"{path}: column '{col}' has a different number of words than 'teacher_tags' in some row")
    n_words = pc.list_value_length(pseudo.column("tokens")).to_numpy(zero_copy_only=False)
    if not np.array_equal(n_words, np.diff(offsets)):
        raise DataError(f"{path}: column 'teacher_tags' has a different number of words than 'tokens' in some row")
    return pseudo.column("tokens").to_pylist(), targets


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


def phase_loss(phase: Phase, model: BiLSTMStudent, rows: WordRows, idx: np.ndarray, s) -> torch.Tensor:
    device = model.device
    ids, mask, words, where = word_batch(rows, idx, device)
    logits, projected = model(ids, mask)  # (B, T, C), (B, T, R)
    shape = tuple(ids.shape)
    if phase.target == "repr":
        return losses.token_repr_loss(s.repr_loss, projected, scatter_words(rows.reprs, where, shape, device), words)
    if phase.target == "soft":
        return losses.token_soft_loss(s.soft_loss, logits, scatter_words(rows.logits, where, shape, device), words, s.temperature)
    return losses.token_hard_ce(logits, scatter_words(rows.labels, where, shape, device), words)


@torch.no_grad()
def evaluate_phase(phase: Phase, model: BiLSTMStudent, dev: WordRows, val: WordRows | None, s) -> dict[str, float]:
    """Dev entity F1 (+ precision, recall, word accuracy, gold-tag loss per word); for stage 1 the
    held-out transfer rows' per-word repr loss decides instead."""
    model.eval()
    device = model.device
    decode = decoder(dev.names, dev.decoding)
    pred: list[list[str]] = [[] for _ in dev.seqs]
    loss_sum, n_words = 0.0, 0
    for idx in length_batches(np.array([len(x) for x in dev.seqs]), 256):
        ids, mask, words, where = word_batch(dev, idx, device)
        logits = model.logits(ids, mask).float()  # (B, T, C)
        host = logits.cpu().numpy()  # (B, T, C)
        for r, i in enumerate(idx):
            pred[i] = [dev.names[k] for k in decode(host[r, dev.firsts[i]], len(dev.gold[i]))]
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
            total += float(phase_loss(phase, model, val, idx, s)) * k
            n += k
        out["val_repr_loss"] = total / max(n, 1)
    # Higher is better. Ties in F1 (small dev sets) go to the lower dev loss.
    out["score"] = -out["val_repr_loss"] if "val_repr_loss" in out else out["dev_f1"] - 1e-6 * out["dev_loss"]
    return out


def result(final: dict[str, float], **fields) -> TokenDistillResult:
    return TokenDistillResult(dev_accuracy=final["dev_token_accuracy"], dev_f1=final["dev_f1"],
                              dev_precision=final["dev_precision"], dev_recall=final["dev_recall"], **fields)
