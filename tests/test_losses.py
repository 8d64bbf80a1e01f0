"""Loss functions against values computed by hand and against torch references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from components.lib.core import losses

torch.set_num_threads(1)


def test_equal_logits_give_zero_soft_losses():
    t = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    assert losses.soft_mse(t.clone(), t).item() == 0.0
    assert losses.soft_kl(t.clone(), t, temperature=1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.soft_kl(t.clone(), t, temperature=4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_mse_hand_example():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    # squared diffs 1, 4, 1, 1 -> mean 7/4
    assert losses.soft_mse(s, t).item() == pytest.approx(1.75)


def test_kl_at_t1_matches_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    ref = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    assert losses.soft_kl(s, t, 1.0).item() == pytest.approx(ref.item(), rel=1e-6)


def test_kl_temperature_scaling_hand_example():
    # Two classes, teacher logits (0, 0) -> p = (1/2, 1/2); student logits (2 ln 3, 0) at T=2 -> q = (3/4, 1/4).
    s = torch.tensor([[2 * math.log(3.0), 0.0]])
    t = torch.zeros(1, 2)
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert losses.soft_kl(s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    assert losses.soft_loss("kl", s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_hard_ce_hand_example():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    # -log(1/2) and -log(1/4)
    assert losses.hard_ce(logits, labels).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_repr_losses():
    r = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])
    assert losses.repr_mse(r.clone(), r.half()).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.repr_cosine(r.clone(), r).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.repr_cosine(3 * r, r).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert losses.repr_cosine(-r, r).item() == pytest.approx(2.0, abs=1e-6)  # opposite
    orth = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    assert losses.repr_cosine(*orth).item() == pytest.approx(1.0)
    assert losses.repr_mse(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])).item() == pytest.approx(5.0)
    assert losses.repr_loss("mse", *orth).item() == pytest.approx(13.0)  # (1 + 25) / 2


def test_unknown_loss_kind():
    with pytest.raises(ValueError, match="soft loss"):
        losses.soft_loss("l1", torch.zeros(1, 2), torch.zeros(1, 2), 1.0)


def test_losses_have_gradients():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    for loss in (losses.soft_mse(s, t), losses.soft_kl(s, t, 2.0), losses.repr_cosine(s, t)):
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
