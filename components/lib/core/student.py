"""The BiLSTM student: a trimmed word-piece vocabulary (VocabMap) and BiLSTMStudent, an encoder
(BiLSTMEncoder: SVD-initialised embeddings, one (V, E) matrix or a (V, r) lookup times an (r, E)
projection, + a BiLSTM, (B, T) ids -> (B, T, 2H) states) under a head (a dense layer in the
teacher's representation width and a classifier): SequenceHead max-pools the states into one
output per text, TokenHead keeps one output per piece.

Pure math: no file I/O, no MLflow. Padding never changes the output and the graph exports to
ONNX with dynamic batch and sequence axes: instead of pack_padded_sequence, the backward LSTM
runs causally over each sequence reversed *within its own length* (pads stay at the end), so no
LSTM ever reads a pad before a real token, and pads are masked out of the max-pool.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from components.lib.core.task import Task

PAD, UNK = 0, 1  # student ids reserved for padding and unknown pieces


class VocabMap:
    """Student id <-> teacher word-piece id. Student 0 = pad, 1 = unk, 2.. = kept pieces."""

    def __init__(self, teacher_ids: list[int] | np.ndarray, teacher_vocab_size: int, teacher_pad_id: int, teacher_unk_id: int):
        # teacher_ids[s] = teacher piece of student id s, for s >= 2 (ids 0/1 are pad/unk).
        self.kept = np.asarray(teacher_ids, dtype=np.int64)
        self.teacher_vocab_size = int(teacher_vocab_size)
        self.teacher_pad_id, self.teacher_unk_id = int(teacher_pad_id), int(teacher_unk_id)
        if len(self.kept) and (self.kept.min() < 0 or self.kept.max() >= self.teacher_vocab_size):
            raise ValueError("teacher ids outside the teacher vocabulary")
        if len(set(self.kept.tolist())) != len(self.kept):
            raise ValueError("duplicate teacher ids in the vocabulary map")
        # Vectorised encoder: one int32 lookup table over the whole teacher vocabulary.
        self.table = np.full(self.teacher_vocab_size, UNK, dtype=np.int32)
        self.table[self.kept] = np.arange(2, 2 + len(self.kept), dtype=np.int32)
        self.table[self.teacher_pad_id] = PAD

    @classmethod
    def from_counts(
        cls, counts: np.ndarray, min_count: int, max_vocab: int | None, keep: list[int],
        teacher_pad_id: int, teacher_unk_id: int,
    ) -> VocabMap:
        """Pieces seen >= min_count times (the most frequent max_vocab of them) plus `keep` (specials).

        counts: (V_teacher,) occurrences of each teacher piece in the training texts.
        """
        counts = np.asarray(counts, dtype=np.int64)
        special = {teacher_pad_id, teacher_unk_id}
        forced = [t for t in dict.fromkeys(keep) if t not in special]
        candidates = np.flatnonzero(counts >= min_count)
        candidates = candidates[~np.isin(candidates, list(special) + forced)]
        # Most frequent first; ties by teacher id so the map is deterministic.
        order = np.lexsort((candidates, -counts[candidates]))
        candidates = candidates[order]
        if max_vocab is not None:
            candidates = candidates[: max(0, max_vocab - 2 - len(forced))]
        kept = np.concatenate([np.asarray(forced, dtype=np.int64), np.sort(candidates)])
        return cls(kept, len(counts), teacher_pad_id, teacher_unk_id)

    def __len__(self) -> int:
        return 2 + len(self.kept)

    @property
    def teacher_ids(self) -> np.ndarray:
        """(S,) teacher piece for every student id, pad and unk included."""
        return np.concatenate([[self.teacher_pad_id, self.teacher_unk_id], self.kept]).astype(np.int64)

    def encode(self, teacher_ids: np.ndarray) -> np.ndarray:
        """Any-shape teacher ids -> student ids (int32); pieces not kept -> UNK."""
        return self.table[np.asarray(teacher_ids, dtype=np.int64)]

    def decode(self, student_ids: np.ndarray) -> np.ndarray:
        return self.teacher_ids[np.asarray(student_ids, dtype=np.int64)]

    def to_dict(self) -> dict:
        return {
            "teacher_vocab_size": self.teacher_vocab_size, "teacher_pad_id": self.teacher_pad_id,
            "teacher_unk_id": self.teacher_unk_id, "teacher_ids": self.kept.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> VocabMap:
        return cls(d["teacher_ids"], d["teacher_vocab_size"], d["teacher_pad_id"], d["teacher_unk_id"])


def _pca_coords(teacher_rows: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """(S, H) rows -> (S, dim) float64 centred rows in their top-`dim` principal axes, U_k diag(s_k)."""
    rows = torch.as_tensor(np.asarray(teacher_rows), dtype=torch.float64)
    if dim > min(rows.shape):
        raise ValueError(f"embed_dim {dim} exceeds the rank bound min{tuple(rows.shape)}")
    centred = rows - rows.mean(dim=0, keepdim=True)  # (S, H)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(S,H), H)
    return centred @ vh[:dim].T  # (S, dim)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt().clamp_min(1e-12)


def svd_embeddings(teacher_rows: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """(S, H) teacher embedding rows -> (S, dim): the centred rows in their top-`dim` principal axes.

    centred = U diag(s) V^T; init = centred V_k = U_k diag(s_k), the rank-k PCA coordinates, scaled
    to unit RMS so the LSTM's default init sees inputs on the usual N(0, 1) embedding scale.
    """
    coords = _pca_coords(teacher_rows, dim)  # (S, dim)
    return (coords / _rms(coords)).float()


def svd_factors(teacher_rows: np.ndarray | torch.Tensor, dim: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, H) teacher rows -> lookup (S, rank), projection (rank, dim): svd_embeddings(rows, dim) factorised.

    lookup = the rank-`rank` PCA coordinates at unit RMS (the scale the full init gives its rows);
    projection = c [I_rank | 0] with c = rms(top `rank` coordinates) / rms(all `dim`), so
    lookup @ projection is svd_embeddings(rows, dim) with its last dim - rank columns zeroed. Those
    columns are orthogonal with falling norms (U diag(s)), so that is its best rank-`rank`
    approximation (Eckart-Young), and at rank == dim the lookup is svd_embeddings itself, c = 1.
    """
    if not 1 <= rank <= dim:
        raise ValueError(f"embed_rank {rank} must be in [1, embed_dim {dim}]")
    coords = _pca_coords(teacher_rows, dim)  # (S, dim)
    top = coords[:, :rank]  # (S, rank)
    lookup = top / _rms(top)
    projection = torch.eye(rank, dim, dtype=torch.float64) * (_rms(top) / _rms(coords))  # (rank, dim)
    return lookup.float(), projection.float()


@dataclass(frozen=True)
class StudentArch:
    vocab_size: int
    embed_dim: int
    hidden: int
    layers: int
    dropout: float
    repr_dim: int  # the teacher's representation width (stage-1 target)
    num_labels: int
    task: str = Task.sequence_classification.value  # token-classification: one output per piece, no pooling
    embed_rank: int | None = None  # None: one (V, E) matrix; r: a (V, r) lookup times an (r, E) projection

    def __post_init__(self):
        if self.embed_rank is not None and not 2 <= self.embed_rank <= self.embed_dim:
            raise ValueError(f"embed_rank {self.embed_rank} must be in [2, embed_dim {self.embed_dim}]")

    @property
    def per_token(self) -> bool:
        return self.task == Task.token_classification.value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StudentArch:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, D): reverse each row's first len_b steps, leave the pads in place (an involution)."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
    lens = lengths.unsqueeze(1)  # (B, 1)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


def encoder_groups(layers: int) -> tuple[str, ...]:
    """Names of the encoder's parameter groups, top first: ("encoder",) for one layer, else
    ("encoder.<layers>", ..., "encoder.1"), so gradual unfreezing can free one layer at a time."""
    return ("encoder",) if layers == 1 else tuple(f"encoder.{i}" for i in range(layers, 0, -1))


class FactorisedEmbedding(nn.Module):
    """(B, T) ids -> (B, T, E) through a (V, r) lookup and an (r, E) projection: V r + r E parameters
    instead of V E. No bias, so the pad row (zero in the lookup, never updated) embeds to zero."""

    def __init__(self, vocab_size: int, rank: int, dim: int):
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, rank, padding_idx=PAD)
        self.proj = nn.Linear(rank, dim, bias=False)
        # Random init: product entries ~ unit variance, like a full nn.Embedding's N(0, 1) rows.
        nn.init.normal_(self.proj.weight, std=rank**-0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.lookup(input_ids))  # (B, T, r) -> (B, T, E)


class BiLSTMEncoder(nn.Module):
    """Embeddings + the BiLSTM stack: (B, T) ids and mask -> (B, T, 2H) states."""

    def __init__(self, arch: StudentArch, embeddings: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None):
        """embeddings: the initial (V, E) matrix, or for arch.embed_rank r the (V, r) lookup and (r, E)
        projection (svd_factors); None keeps the random init."""
        super().__init__()
        self.arch = arch
        if arch.embed_rank is None:  # state-dict key encoder.embeddings.weight, as before factorising
            self.embeddings = nn.Embedding(arch.vocab_size, arch.embed_dim, padding_idx=PAD)
        else:
            self.embeddings = FactorisedEmbedding(arch.vocab_size, arch.embed_rank, arch.embed_dim)
        if embeddings is not None:
            self._set_embeddings(embeddings)
        self.dropout = nn.Dropout(arch.dropout)
        widths = [arch.embed_dim] + [2 * arch.hidden] * (arch.layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(w, arch.hidden, batch_first=True) for w in widths)
        self.bwd = nn.ModuleList(nn.LSTM(w, arch.hidden, batch_first=True) for w in widths)

    @torch.no_grad()
    def _set_embeddings(self, embeddings: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> None:
        v, e, r = self.arch.vocab_size, self.arch.embed_dim, self.arch.embed_rank
        if r is None:
            got, want = tuple(getattr(embeddings, "shape", ())), (v, e)
            if got != want:
                raise ValueError(f"embeddings shape {got} != {want}")
            self.embeddings.weight.copy_(embeddings)
            self.embeddings.weight[PAD].zero_()
            return
        got_pair = [tuple(t.shape) for t in embeddings] if isinstance(embeddings, tuple | list) else None
        if got_pair != [(v, r), (r, e)]:
            raise ValueError(f"embed_rank {r}: expected a (lookup {(v, r)}, projection {(r, e)}) pair, got shapes {got_pair}")
        lookup, projection = embeddings
        self.embeddings.lookup.weight.copy_(lookup)
        self.embeddings.lookup.weight[PAD].zero_()
        self.embeddings.proj.weight.copy_(projection.T)  # nn.Linear keeps (out, in)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The encoder's unfreezing groups, top first (encoder_groups), then "embeddings"."""
        if self.arch.layers == 1:
            layers = {"encoder": [*self.fwd.parameters(), *self.bwd.parameters()]}
        else:  # "encoder.<i>": both directions of layer i (1 = the bottom one, over the embeddings)
            layers = {name: [*self.fwd[i].parameters(), *self.bwd[i].parameters()]
                      for name, i in zip(encoder_groups(self.arch.layers), reversed(range(self.arch.layers)), strict=True)}
        return {**layers, "embeddings": [*self.embeddings.parameters()]}

    def _layers(self, input_ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                natural_last: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the BiLSTM stack over (B, T) ids, mask (bool) and lengths (B,). natural_last: the
        (B, T, 2H) states of the top layer in natural order, pads zeroed; else its forward states and
        its backward states still in reversed order ((B, T, H) each; pads hold garbage) - all an
        order-free pooling needs, one gather less."""
        x = self.dropout(self.embeddings(input_ids))  # (B, T, E)
        top = len(self.fwd) - 1
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd, strict=True)):
            h_f, _ = fwd(x)  # (B, T, H): step t saw tokens 0..t
            h_b, _ = bwd(reverse_within_length(x, lengths))  # step t saw tokens len-1..len-1-t
            if i == top and not natural_last:
                return h_f, h_b
            h_b = reverse_within_length(h_b, lengths)  # back to natural order
            x = torch.cat([h_f, h_b], dim=-1) * mask.unsqueeze(-1).to(x.dtype)  # (B, T, 2H), pad states zeroed
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, 2H) BiLSTM states, pad positions zeroed."""
        mask = attention_mask.bool()  # (B, T); real tokens first, pads at the end
        return self._layers(input_ids, mask, mask.long().sum(1), natural_last=True)

    def states_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  cols: torch.Tensor) -> torch.Tensor:
        """forward(...)[rows, cols]: the (N, 2H) states at N real positions, each direction gathered
        where it lies (the top layer's backward states read reversed in place), so the whole (B, T, 2H)
        is never reordered, concatenated or masked."""
        mask = attention_mask.bool()
        lengths = mask.long().sum(1)  # (B,)
        h_f, h_b = self._layers(input_ids, mask, lengths, natural_last=False)
        return torch.cat([h_f[rows, cols], h_b[rows, lengths[rows] - 1 - cols]], dim=-1)

    def max_pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, 2H) masked max-pool of the states.

        Max-pooling does not care about order, and reverse_within_length leaves the pads in place,
        so the top layer's backward states are pooled as they come out (reversed): the same
        numbers as pooling forward(), without reordering and concatenating (B, T, 2H)."""
        mask = attention_mask.bool()
        lengths = mask.long().sum(1)  # (B,)
        h_f, h_b = self._layers(input_ids, mask, lengths, natural_last=False)
        pad = ~mask.unsqueeze(-1)  # (B, T, 1)
        pooled = torch.cat([h_f.masked_fill(pad, float("-inf")).amax(dim=1),
                            h_b.masked_fill(pad, float("-inf")).amax(dim=1)], dim=-1)  # (B, 2H)
        # An all-pad row would pool to -inf; make it 0 instead of NaN downstream.
        return pooled.masked_fill((lengths == 0).unsqueeze(-1), 0.0)


class Output(nn.Module):
    """What both heads end in: dense (into the teacher's representation width) -> GELU ->
    classifier, over features (..., 2H) -> logits (..., C) and the projected representation
    (..., R) that stage 1 regresses onto the teacher's."""

    def __init__(self, arch: StudentArch):
        super().__init__()
        self.dropout = nn.Dropout(arch.dropout)
        self.dense = nn.Linear(2 * arch.hidden, arch.repr_dim)
        self.classifier = nn.Linear(arch.repr_dim, arch.num_labels)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.dense(self.dropout(feats))  # (..., R)
        return self.classifier(self.dropout(torch.nn.functional.gelu(projected))), projected  # (..., C), (..., R)


class SequenceHead(nn.Module):
    """One output per text: the masked max-pool of the encoder's states -> logits (B, C), projected (B, R)."""

    def __init__(self, arch: StudentArch):
        super().__init__()
        self.out = Output(arch)

    def forward(self, encoder: BiLSTMEncoder, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out(encoder.max_pool(input_ids, attention_mask))  # from (B, 2H)


class TokenHead(nn.Module):
    """One output per piece: every state of the encoder -> logits (B, T, C), projected (B, T, R)."""

    def __init__(self, arch: StudentArch):
        super().__init__()
        self.out = Output(arch)

    def forward(self, encoder: BiLSTMEncoder, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out(encoder(input_ids, attention_mask))  # from (B, T, 2H)


class BiLSTMStudent(nn.Module):
    """The encoder under the head of arch.task (SequenceHead, or TokenHead for a tagger). A new head
    (a CRF's emissions, say) is one more class here and one decoder in decode.py."""

    def __init__(self, arch: StudentArch, embeddings: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.arch = arch
        # Made in this order (embeddings, LSTMs, dense, classifier): the seed's draws fix every weight.
        self.encoder = BiLSTMEncoder(arch, embeddings)
        self.head = (TokenHead if arch.per_token else SequenceHead)(arch)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.embeddings.parameters()).device

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Groups for gradual unfreezing, top-down: classifier (+dense), encoder, embeddings; a
        stacked encoder is one group per layer, top first (encoder_groups)."""
        return {"classifier": [*self.head.parameters()], **self.encoder.param_groups()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits (B, C), projected representation (B, R) (regressed onto the teacher's in stage 1).
        A token-classification student keeps every position: logits (B, T, C), projected (B, T, R)."""
        return self.head(self.encoder, input_ids, attention_mask)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) -> (B, C), or (B, T, C) per piece for a tagger: the inference graph (what ONNX exports)."""
        return self.forward(input_ids, attention_mask)[0]

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  cols: torch.Tensor) -> torch.Tensor:
        """A tagger's logits (N, C) at the N pieces (rows[n], cols[n]) alone (each word's first piece):
        the encoder's states are gathered there and the head runs on those alone, not on every piece
        and pad. Equal to logits(...)[rows, cols]."""
        if not self.arch.per_token:
            raise ValueError("logits_at is for token-classification students")
        return self.head.out(self.encoder.states_at(input_ids, attention_mask, rows, cols))[0]


class LogitsOnly(nn.Module):
    """Wraps a student so torch.onnx.export / tracing sees a single output: logits (B, C) (per piece
    for a tagger), or, traced with rows and cols too, a tagger's logits_at (N, C)."""

    def __init__(self, student: BiLSTMStudent):
        super().__init__()
        self.student = student
        self.train(student.training)  # a fresh Module is in training mode; keep the student's mode

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor | None = None,
                cols: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            return self.student.logits(input_ids, attention_mask)
        return self.student.logits_at(input_ids, attention_mask, rows, cols)

