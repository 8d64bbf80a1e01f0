"""finetune-teacher hooks for token classification (an AutoModelForTokenClassification tagger):
- each word's tag goes on its FIRST sub-piece; later pieces and special tokens get -100, so they
  carry no loss (tokens.piece_labels);
- dev is scored as ENTITY F1 (seqeval, exact spans, ner_metrics.entity_scores) and the best-F1
  epoch is kept. Words cut off by teacher.max_length are predicted as the O tag and tags are
  decoded by evaluate.decoding (core/decode.py), exactly as evaluation treats them, so the dev F1
  here is the F1 the pipeline sees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import token_data
from components.lib.core import ner_metrics, tokens
from components.lib.core.decode import decode_tags
from components.lib.core.task import Task
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from components.lib.training import finetune as F

log = logging.getLogger("distilflow.finetune_teacher")
TASK = Task.token_classification
DEV_METRICS = ("f1", "precision", "recall")  # the first one selects the epoch
SCORES = ("dev_f1", "dev_precision", "dev_recall")
FIT_LOG = "fine-tuning %s (%.1fM params) as a token classifier on %d sentences, dev %d"
DONE_LOG = ("teacher: dev entity F1 %.4f (P %.4f R %.4f; best epoch %s of %d), %.1f train sentences/s, "
            "%.0f s -> %s")
read = token_data.read_token_labeled


class TokenFinetuneResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    teacher_dir: str
    label_names: list[str]
    dev_f1: float
    dev_precision: float
    dev_recall: float
    best_epoch: int | None
    epochs_run: int
    train_examples_per_s: float | None  # sentences per second
    epochs_resumed: int = 0  # epochs a killed run had finished, restored from its checkpoint
    params: int
    seconds: float
    mlflow_run_id: str | None
    model_uri: str | None


Result = TokenFinetuneResult


def _sentences(split: token_data.TokenLabeled) -> list[list[str]]:
    return split.table.column("tokens").to_pylist()


def _gold(split: token_data.TokenLabeled) -> list[list[str]]:
    return ner_metrics.tag_names(split.table.column("tags").to_pylist(), split.label_names)


def words_cut(enc: tokens.WordEncoding, sentences: Sequence[Sequence[str]]) -> int:
    """Words beyond max_length (no piece): trained on nothing, predicted as O."""
    return sum(len(s) - enc.covered(i) for i, s in enumerate(sentences))


def encode(tokenizer, split: token_data.TokenLabeled, max_length: int):
    """(datasets.Dataset of input_ids/attention_mask/labels, the WordEncoding) of a labeled split."""
    from datasets import Dataset

    sents = _sentences(split)
    enc = tokens.encode_words(tokenizer, sents, max_length)
    tags = split.table.column("tags").to_pylist()
    labels = [tokens.piece_labels(fp, t, len(ids)).tolist()
              for fp, t, ids in zip(enc.first_piece, tags, enc.input_ids, strict=True)]
    ds = Dataset.from_dict({
        "input_ids": [ids.tolist() for ids in enc.input_ids],
        "attention_mask": [[1] * len(ids) for ids in enc.input_ids],
        "labels": labels,
    })
    return ds, enc


def predict_tags(model, tokenizer, sentences: Sequence[Sequence[str]], label_names: Sequence[str], max_length: int,
                 batch_size: int, decoding: str) -> list[list[str]]:
    """Tag names of every word (teacher.score_words: first sub-piece; cut-off words are O)."""
    logits, _ = T.score_words(model, tokenizer, sentences, max_length, batch_size)
    return decode_tags(logits, [len(x) for x in sentences], label_names, decoding)


def dev_scores(model, tokenizer, dev: token_data.TokenLabeled, cfg: PipelineConfig) -> dict:
    pred = predict_tags(model, tokenizer, _sentences(dev), dev.label_names, cfg.teacher.max_length, cfg.transfer.batch_size,
                        cfg.evaluate.decoding)
    return ner_metrics.entity_scores(_gold(dev), pred)


def params(train: token_data.TokenLabeled, dev: token_data.TokenLabeled) -> dict:
    return {"task": TASK, "train_sentences": len(train.table), "dev_sentences": len(dev.table)}


def fit_inputs(cfg: PipelineConfig, tokenizer, train: token_data.TokenLabeled, dev: token_data.TokenLabeled):
    """The Trainer's dev metrics are dev_f1/precision/recall of the tags decoded (evaluate.decoding)
    from each word's first-piece logits."""
    from transformers import DataCollatorForTokenClassification

    train_ds, train_enc = encode(tokenizer, train, cfg.teacher.max_length)
    dev_ds, dev_enc = encode(tokenizer, dev, cfg.teacher.max_length)
    cut = words_cut(train_enc, _sentences(train))
    if cut:
        log.warning("%d train words lie beyond teacher.max_length=%d and are not trained on", cut, cfg.teacher.max_length)
    # The Trainer's dev batches follow the dataset's order: sorted by length they pad to 1.01x the
    # real pieces, not ~2.3x (40-language dev); entity F1 does not depend on the order.
    order = np.argsort([len(x) for x in dev_enc.input_ids], kind="stable")
    dev_ds = dev_ds.select(order)
    gold_in_order = _gold(dev)
    gold = [gold_in_order[i] for i in order]
    n_words = [len(g) for g in gold]

    def entity_f1(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions  # (N, T, C), padded
        words = [np.asarray(logits[j])[dev_enc.first_piece[i][: dev_enc.covered(i)]] for j, i in enumerate(order)]
        scores = ner_metrics.entity_scores(gold, decode_tags(words, n_words, dev.label_names, cfg.evaluate.decoding))
        return {m: scores[m] for m in DEV_METRICS}

    return train_ds, dev_ds, DataCollatorForTokenClassification(tokenizer), entity_f1


def report(model, tokenizer, train: token_data.TokenLabeled, dev: token_data.TokenLabeled,
           cfg: PipelineConfig) -> dict:
    scores = dev_scores(model, tokenizer, dev, cfg)
    sents = _sentences(dev)
    dev_cut = words_cut(tokens.encode_words(tokenizer, sents, cfg.teacher.max_length), sents)
    return {
        **{f"dev_{k}": scores[k] for k in ("f1", "precision", "recall", "macro_f1", "token_accuracy", "per_type")},
        "dev_words_cut": dev_cut,
        "train_sentences": len(train.table),
        "dev_sentences": len(dev.table),
        "task": TASK,
    }


def run_metrics(report: dict) -> dict:
    logged = ("dev_f1", "dev_precision", "dev_recall", "dev_token_accuracy", "dev_words_cut")
    return {**{k: report[k] for k in logged}, **{f"dev_f1.{typ}": v["f1"] for typ, v in report["dev_per_type"].items()}}


def log_model(tr: tracking.StepTracker, model, tokenizer, dev: token_data.TokenLabeled) -> str | None:
    return F.log_model(tr, model, tokenizer, TASK, [" ".join(s) for s in _sentences(dev)[:2]])
