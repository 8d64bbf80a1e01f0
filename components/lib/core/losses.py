"""Distillation losses: pure functions of tensors, means over the batch.

hard_ce      cross-entropy on (teacher or gold) hard labels
soft_mse     MSE between student and teacher logits (the paper's choice: it keeps the logits'
             scale, which softmax-based losses throw away)
soft_kl      T^2 * KL(teacher || student) on temperature softmaxes (Hinton et al.)
repr_mse / repr_cosine   stage 1: the student's projected representation vs the teacher's
token_*      the same per word for a tagger: (B, T, ...) outputs and targets with a (B, T) mask of
             the positions that carry a word (its first piece); the mean runs over those only
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, C), labels (B,) int -> scalar mean cross-entropy."""
    return F.cross_entropy(logits, labels)


def soft_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C) -> mean over B*C of the squared logit difference."""
    return (student_logits - teacher_logits).pow(2).mean()


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, C), (B, C) -> T^2 * mean_b KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)  # (B, C)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)  # (B, C)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B,)
    return kl.mean() * t * t


def repr_mse(student_repr: torch.Tensor, teacher_repr: torch.Tensor) -> torch.Tensor:
    """(B, R), (B, R) -> mean over B*R of the squared difference."""
    return (student_repr - teacher_repr.to(student_repr.dtype)).pow(2).mean()


def repr_cosine(student_repr: torch.Tensor, teacher_repr: torch.Tensor) -> torch.Tensor:
    """(B, R), (B, R) -> mean_b (1 - cos(student_b, teacher_b)); 0 for parallel vectors."""
    return (1.0 - F.cosine_similarity(student_repr, teacher_repr.to(student_repr.dtype), dim=-1, eps=1e-8)).mean()


def soft_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if kind == "mse":
        return soft_mse(student_logits, teacher_logits)
    if kind == "kl":
        return soft_kl(student_logits, teacher_logits, temperature)
    raise ValueError(f"unknown soft loss {kind!r}")


def repr_loss(kind: str, student_repr: torch.Tensor, teacher_repr: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        return repr_mse(student_repr, teacher_repr)
    if kind == "cosine":
        return repr_cosine(student_repr, teacher_repr)
    raise ValueError(f"unknown representation loss {kind!r}")


# ---------------------------------------------------------------- per token (masked)

def _words(mask: torch.Tensor, *xs: torch.Tensor) -> list[torch.Tensor]:
    """(B, T, ...) tensors -> (N, ...) rows at the N positions where mask (B, T) is true.
    Selecting (not multiplying by 0) keeps whatever sits at pad positions, even inf/NaN, out."""
    m = mask.bool()
    return [x[m] for x in xs]


def _empty(like: torch.Tensor) -> torch.Tensor:
    # No word in the batch: a zero that still backpropagates (zero gradients), not a NaN mean.
    return like.sum() * 0.0


def token_hard_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (B, T, C), labels (B, T) int, mask (B, T) -> mean CE over the masked words."""
    lg, lb = _words(mask, logits, labels)
    return hard_ce(lg, lb) if len(lb) else _empty(logits)


def token_soft_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """(B, T, C), (B, T, C), mask (B, T) -> soft_loss over the masked words (each word one row)."""
    s, t = _words(mask, student_logits, teacher_logits)
    return soft_loss(kind, s, t, temperature) if len(s) else _empty(student_logits)


def token_repr_loss(kind: str, student_repr: torch.Tensor, teacher_repr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, R), (B, T, R), mask (B, T) -> repr_loss over the masked words."""
    s, t = _words(mask, student_repr, teacher_repr)
    return repr_loss(kind, s, t) if len(s) else _empty(student_repr)
