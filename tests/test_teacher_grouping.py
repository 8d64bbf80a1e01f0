"""teacher.group_by_length (lib/training/finetune.fit): the Trainer's batches of mixed-length
sentences are formed of similar lengths, so far fewer padded tokens are computed, over the same
examples; off (the default) keeps random batches. Either way the dev pass keeps dev's order
(transformers 5 would group it by length too, and dev metrics read gold by index)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
)

from components.lib.settings.config import PipelineConfig
from components.lib.training import finetune as F

torch.set_num_threads(1)


def _data(tok, n: int, seed: int):
    from datasets import Dataset

    rng = random.Random(seed)
    ids = [[tok.cls_token_id, *(rng.randrange(1000, tok.vocab_size) for _ in range(rng.randint(2, 100))), tok.sep_token_id]
           for _ in range(n)]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                              "labels": [[-100, *(rng.randrange(3) for _ in x[2:]), -100] for x in ids]})


def _train_batches(tmp_path, tiny_bert_dir, grouped: bool) -> list[tuple[int, int]]:
    """(padded tokens, real tokens) of every training batch of one epoch."""
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, num_labels=3))
    seen: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        if module.training:
            seen.append((kwargs["input_ids"].numel(), int(kwargs["attention_mask"].sum())))

    model.register_forward_pre_hook(record, with_kwargs=True)
    cfg = PipelineConfig.model_validate({
        "work_dir": str(tmp_path), "tracking": {"enabled": False},
        "teacher": {"model": str(tiny_bert_dir), "epochs": 1, "batch_size": 8, "num_threads": 1,
                    "group_by_length": grouped}})
    dev = _data(tok, 48, 2)

    def in_dev_order(pred) -> dict[str, float]:
        """1.0 when the dev predictions come back in dev's order (compute_metrics reads gold by index)."""
        got = [[x for x in row if x != -100] for row in pred.label_ids.tolist()]
        return {"accuracy": float(got == [[x for x in row if x != -100] for row in dev["labels"]])}

    _, history, _, _ = F.fit(cfg, model, tok, _data(tok, 400, 1), dev, DataCollatorForTokenClassification(tok),
                             in_dev_order, ["accuracy"], tmp_path / "ckpt", "fingerprint")
    assert history[1]["dev_accuracy"] == 1.0, "the Trainer's dev pass reordered the dev set"
    return seen


@pytest.mark.parametrize("grouped", [False, True], ids=["random", "grouped"])
def test_grouped_batches_compute_far_fewer_padded_tokens(tmp_path, tiny_bert_dir, grouped):
    batches = _train_batches(tmp_path, tiny_bert_dir, grouped)
    padded, real = map(sum, zip(*batches, strict=True))
    assert len(batches) == 50 and real == sum(len(x) for x in _data(
        AutoTokenizer.from_pretrained(tiny_bert_dir), 400, 1)["input_ids"])  # every example once
    # lengths 4-102 at random: random batches of 8 pad to ~1.5x the real tokens; one sorted run of 50 batches ~1.02x
    assert (padded / real < 1.1) if grouped else (padded / real > 1.3), padded / real
