"""The teacher's optimizer with a separate head lr and frozen word embeddings (lib/training/finetune.py):
which parameters train, at which lr, with which weight decay."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForTokenClassification

from components.lib.settings.config import TeacherConfig
from components.lib.training.finetune import optimizer


def tiny_tagger() -> BertForTokenClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=5)
    return BertForTokenClassification(config)


def test_head_gets_its_own_lr_and_frozen_embeddings_leave_the_optimizer():
    model = tiny_tagger()
    tc = TeacherConfig(lr=1e-4, head_lr=2e-3, freeze_embeddings=True, weight_decay=0.01)
    opt = optimizer(model, tc)
    emb = model.get_input_embeddings().weight
    assert not emb.requires_grad
    in_opt = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert id(emb) not in in_opt
    names = dict(model.named_parameters())
    # every other parameter is optimised exactly once
    assert len(in_opt) == sum(1 for p in names.values() if p.requires_grad) == len(names) - 1
    for name, p in names.items():
        if p is emb:
            continue
        group = in_opt[id(p)]
        head = not name.startswith("bert.")
        assert group["lr"] == (2e-3 if head else 1e-4), name
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.01), name


def test_one_step_moves_the_head_and_not_the_frozen_embeddings():
    model = tiny_tagger()
    opt = optimizer(model, TeacherConfig(lr=1e-4, head_lr=2e-3, freeze_embeddings=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 50, (4, 7))
    loss = model(input_ids=ids, labels=torch.randint(0, 5, (4, 7))).loss
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    head_step = (after["classifier.weight"] - before["classifier.weight"]).abs().max()
    enc_step = (after["bert.encoder.layer.0.attention.self.query.weight"] - before["bert.encoder.layer.0.attention.self.query.weight"]).abs().max()
    assert head_step > 5 * enc_step > 0  # AdamW's first step moves each weight by about its lr
