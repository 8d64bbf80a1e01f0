"""finetune-teacher for token classification (an AutoModelForTokenClassification tagger).

The sequence-classification recipe (lib/training/finetune.py: Trainer arguments, early stopping, best
checkpoint, output dir, MLflow logging; the seed as in finetune_teacher/sequence.py) with two
differences:
- each word's tag goes on its FIRST sub-piece; later pieces and special tokens get -100, so they
  carry no loss (tokens.piece_labels);
- dev is scored as ENTITY F1 (seqeval, exact spans, ner_metrics.entity_scores) and the best-F1
  epoch is kept. Words cut off by teacher.max_length are predicted as the O tag, exactly as
  pseudo-labelling and evaluation treat them, so the dev F1 here is the F1 the pipeline sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from transformers import set_seed

from components.lib.contracts import token_data
from components.lib.core import ner_metrics, tokens
from components.lib.core.decode import decode_tags
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.core.torch_utils import count_parameters
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking
from components.lib.training import finetune as F

log = logging.getLogger("distilflow.finetune_teacher")
TASK = Task.token_classification
DEV_METRICS = ("f1", "precision", "recall")  # the first one selects the epoch


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
    labels = [tokens.piece_labels(fp, t, len(ids)).tolist() for fp, t, ids in zip(enc.first_piece, tags, enc.input_ids, strict=True)]
    ds = Dataset.from_dict({
        "input_ids": [ids.tolist() for ids in enc.input_ids],
        "attention_mask": [[1] * len(ids) for ids in enc.input_ids],
        "labels": labels,
    })
    return ds, enc


def predict_tags(model, tokenizer, sentences: Sequence[Sequence[str]], label_names: Sequence[str], max_length: int,
                 batch_size: int) -> list[list[str]]:
    """Tag names of every word (teacher.score_words: first sub-piece; cut-off words are O)."""
    logits, _ = T.score_words(model, tokenizer, sentences, max_length, batch_size)
    return decode_tags(logits, [len(x) for x in sentences], label_names)


def dev_scores(model, tokenizer, dev: token_data.TokenLabeled, cfg: PipelineConfig) -> dict:
    pred = predict_tags(model, tokenizer, _sentences(dev), dev.label_names, cfg.teacher.max_length, cfg.transfer.batch_size)
    return ner_metrics.entity_scores(_gold(dev), pred)


def _train(cfg: PipelineConfig, model, tokenizer, train: token_data.TokenLabeled, dev: token_data.TokenLabeled, ckpt_dir: Path,
           fingerprint: str):
    """(trainer, per-epoch history with dev_f1/precision/recall, train sentences/s, epochs resumed)."""
    from transformers import DataCollatorForTokenClassification

    train_ds, train_enc = encode(tokenizer, train, cfg.teacher.max_length)
    dev_ds, dev_enc = encode(tokenizer, dev, cfg.teacher.max_length)
    cut = words_cut(train_enc, _sentences(train))
    if cut:
        log.warning("%d train words lie beyond teacher.max_length=%d and are not trained on", cut, cfg.teacher.max_length)
    gold = _gold(dev)
    n_words = [len(g) for g in gold]

    def entity_f1(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions  # (N, T, C), padded
        words = [np.asarray(logits[i])[dev_enc.first_piece[i][: dev_enc.covered(i)]] for i in range(len(gold))]
        scores = ner_metrics.entity_scores(gold, decode_tags(words, n_words, dev.label_names))
        return {m: scores[m] for m in DEV_METRICS}

    return F.fit(cfg, model, tokenizer, train_ds, dev_ds, DataCollatorForTokenClassification(tokenizer), entity_f1,
                 DEV_METRICS, ckpt_dir, fingerprint)


def run(cfg: PipelineConfig) -> TokenFinetuneResult:
    tc = cfg.teacher
    t0 = time.perf_counter()
    F.set_threads(tc.num_threads)
    train = token_data.read_token_labeled(cfg.data_dir / "train.parquet")
    dev = token_data.read_token_labeled(cfg.data_dir / "dev.parquet")
    if train.label_names != dev.label_names:
        raise UserError(f"{cfg.data_dir / 'dev.parquet'}: tag names {dev.label_names} differ from train's {train.label_names}")
    names = train.label_names
    src = tracking.resolve_model_ref(tc.model, cfg)

    with tracking.step_run(cfg, F.STEP) as tr:
        tr.log_params({"teacher": tc.model_dump(mode="json"), "task": TASK, "train_sentences": len(train.table),
                       "dev_sentences": len(dev.table), "label_names": names})
        history: dict[int, dict[str, float]] = {}
        ex_per_s: float | None = None
        resumed = 0
        is_main = True
        ckpt = F.checkpoint_dir(cfg.teacher_dir)  # resumable, as in finetune_teacher/sequence.py
        if tc.finetune:
            set_seed(tc.seed)  # before the fresh head is initialised (see finetune_teacher/sequence.py)
            model, tokenizer = T.load_teacher(src, label_names=names, task=TASK)
            log.info("fine-tuning %s (%.1fM params) as a token classifier on %d sentences, dev %d", tc.model,
                     count_parameters(model) / 1e6, len(train.table), len(dev.table))
            fingerprint = F.run_fingerprint(cfg, [cfg.data_dir / "train.parquet", cfg.data_dir / "dev.parquet"], src, model)
            trainer, history, ex_per_s, resumed = _train(cfg, model, tokenizer, train, dev, ckpt, fingerprint)
            model = trainer.model
            is_main = trainer.is_world_process_zero()
        else:
            model, tokenizer = F.load_finetuned(src, tc.model, names, task=TASK)
        params = count_parameters(model)
        if not is_main:  # other torchrun ranks: rank 0 writes the output and logs
            nan = float("nan")
            return TokenFinetuneResult(teacher_dir=str(cfg.teacher_dir), label_names=names, dev_f1=nan, dev_precision=nan,
                                       dev_recall=nan, best_epoch=None, epochs_run=len(history), epochs_resumed=resumed, train_examples_per_s=ex_per_s,
                                       params=params, seconds=time.perf_counter() - t0, mlflow_run_id=None, model_uri=None)
        model.eval()
        scores = dev_scores(model, tokenizer, dev, cfg)
        dev_cut = words_cut(tokens.encode_words(tokenizer, _sentences(dev), tc.max_length), _sentences(dev))
        best = F.best_epoch(history, "dev_f1")
        seconds = time.perf_counter() - t0
        metrics = {
            **{f"dev_{k}": scores[k] for k in ("f1", "precision", "recall", "macro_f1", "token_accuracy", "per_type")},
            "dev_words_cut": dev_cut,
            "best_epoch": best,
            "epochs_run": len(history),
            "history": [{"epoch": ep, **h} for ep, h in sorted(history.items())],
            "train_sentences": len(train.table),
            "dev_sentences": len(dev.table),
            "train_examples_per_s": ex_per_s,
            "params": params,
            "seconds": seconds,
            "finetuned": tc.finetune,
            "label_names": names,
            "source": tc.model,
            "task": TASK,
        }
        F.save_teacher(cfg.teacher_dir, model, tokenizer, metrics)
        log.info("teacher: dev entity F1 %.4f (P %.4f R %.4f; best epoch %s of %d), %.1f train sentences/s, %.0f s -> %s",
                 scores["f1"], scores["precision"], scores["recall"], best, len(history), ex_per_s or 0.0, seconds,
                 cfg.teacher_dir)

        for ep, h in sorted(history.items()):
            tr.log_metrics(h, step=ep)
        tr.log_metrics({"dev_f1": scores["f1"], "dev_precision": scores["precision"], "dev_recall": scores["recall"],
                        "dev_token_accuracy": scores["token_accuracy"], "dev_words_cut": dev_cut,
                        **{f"dev_f1.{typ}": v["f1"] for typ, v in scores["per_type"].items()},
                        "best_epoch": best or 0, "params": params, "seconds": seconds,
                        **({"train_examples_per_s": ex_per_s} if ex_per_s else {})})
        model_uri = None
        if tr.run_id is not None:
            tr.log_artifacts(cfg.teacher_dir, "teacher_dir")
            example = [" ".join(s) for s in _sentences(dev)[:2]]
            model_uri = F.log_model(tr, model, tokenizer, TASK, example)
        return TokenFinetuneResult(teacher_dir=str(cfg.teacher_dir), label_names=names, dev_f1=scores["f1"],
                                   dev_precision=scores["precision"], dev_recall=scores["recall"], best_epoch=best,
                                   epochs_run=len(history), epochs_resumed=resumed, train_examples_per_s=ex_per_s, params=params, seconds=seconds,
                                   mlflow_run_id=tr.run_id, model_uri=model_uri)
