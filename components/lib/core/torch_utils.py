"""Helpers the teacher and the student share: parameter counts and length-bucketed batches."""

from __future__ import annotations

import numpy as np
import torch


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices sorted by length (stable: equal lengths keep their order), cut into batches, so a
    batch pads only to its own longest member."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
