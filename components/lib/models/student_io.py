"""Student I/O: save/load a student dir, turn texts into student ids, predict logits.

A student dir holds model.safetensors, config.json (architecture, label names, mode,
max_length, teacher info), vocab.json (the VocabMap) and the teacher's tokenizer files. The
evaluate and export steps use this module; training lives in components/distill_student/.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.lib.core.errors import UserError
from components.lib.core.student import BiLSTMStudent, StudentArch, VocabMap
from components.lib.core.tokens import word_outputs
from components.lib.core.torch_utils import count_parameters, length_batches
from components.lib.core.truncation import tokenize_truncated

FORMAT = "distilflow-bilstm-student"
__all__ = [
    "LoadedStudent", "save_student", "load_student", "encode", "predict_logits",
    "tokenize_ids", "pad_batch", "id_batches", "word_ids", "predict_word_logits", "predict_tags",
]


@dataclass
class LoadedStudent:
    model: BiLSTMStudent  # in eval mode
    arch: StudentArch
    vocab: VocabMap
    tokenizer: Any
    label_names: list[str]
    mode: str
    max_length: int
    config: dict = field(default_factory=dict)


def save_student(
    out_dir: str | Path, model: BiLSTMStudent, arch: StudentArch, vocab: VocabMap, tokenizer: Any,
    label_names: Sequence[str], mode: str, max_length: int, teacher: dict | None = None,
    vocab_sizing: dict | None = None,
) -> None:
    """config.json records arch.task; a token-classification student predicts one tag per word
    (at its first piece), so its consumers call predict_word_logits instead of predict_logits.
    config.json's `vocab`: the kept pieces and, given `vocab_sizing`, how they were chosen."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
    import transformers

    # transformers_version: which transformers wrote the tokenizer files beside it. transformers >= 5
    # reads a local tokenizer dir's config.json, and one with neither a model_type nor this key (ours
    # is no transformers model) makes it warn, for any vocabulary over 100k pieces (XLM-R's), that
    # the tokenizer may carry Mistral's broken pre-tokenizer regex: false here (the files are the
    # teacher's, saved by transformers; tests/test_multilingual_teacher.py compares the ids).
    config = {
        "format": FORMAT, "transformers_version": transformers.__version__, "arch": arch.to_dict(), "label_names": list(label_names), "mode": str(mode),
        "max_length": int(max_length), "parameters": count_parameters(model), "teacher": teacher or {},
        "vocab": {"size": len(vocab), "teacher_vocab_size": vocab.teacher_vocab_size, **(vocab_sizing or {})},
    }
    tokenizer.save_pretrained(str(out))  # before config.json: tokenizer files never clobber it
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "vocab.json").write_text(json.dumps(vocab.to_dict()) + "\n")


def load_student(path: str | Path) -> LoadedStudent:
    from transformers import AutoTokenizer

    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise UserError(f"{path}: not a student dir (config.json missing)")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT:
        raise UserError(f"{cfg_path}: 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    for name in ("model.safetensors", "vocab.json"):
        if not (path / name).exists():
            raise UserError(f"{path}: {name} missing")
    try:  # a student saved before embed_rank existed has no such key: one (V, E) matrix, as then
        arch = StudentArch.from_dict(config["arch"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{cfg_path}: 'arch' is not a student architecture ({err})") from None
    vocab = VocabMap.from_dict(json.loads((path / "vocab.json").read_text()))
    if len(vocab) != arch.vocab_size:
        raise UserError(f"{path}/vocab.json: {len(vocab)} ids, but the model has vocab_size {arch.vocab_size}")
    model = BiLSTMStudent(arch)
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except RuntimeError as err:  # torch's lines after its header name the missing/unexpected/resized keys
        why = "; ".join(line.strip().rstrip(".") for line in str(err).splitlines()[1:])
        raise UserError(f"{path}/model.safetensors does not match config.json's arch: {why}") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedStudent(model, arch, vocab, tokenizer, list(config["label_names"]), config["mode"], int(config["max_length"]), config)


# ---------------------------------------------------------------- ids

def tokenize_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Texts -> teacher word-piece ids (with [CLS]/[SEP]), truncated to max_length; ragged int32."""
    enc = tokenize_truncated(tokenizer, texts, max_length, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)
    return [np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]


def pad_batch(seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged student ids -> input_ids (B, T) long, attention_mask (B, T) long; pads (0) at the end."""
    t = max(1, max(len(s) for s in seqs))
    ids = np.zeros((len(seqs), t), dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _tokenizing(student: LoadedStudent | tuple[Any, VocabMap], max_length: int | None) -> tuple[Any, VocabMap, int]:
    """(tokenizer, vocab, max_length) of a loaded student, or of a (tokenizer, vocab) pair and an explicit max_length."""
    if isinstance(student, LoadedStudent):
        return student.tokenizer, student.vocab, max_length or student.max_length
    tokenizer, vocab = student
    if max_length is None:
        raise ValueError("max_length is required with (tokenizer, vocab)")
    return tokenizer, vocab, max_length


def encode(
    student: LoadedStudent | tuple[Any, VocabMap], texts: Sequence[str], max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids (B, T), attention_mask (B, T)) in student ids, padded to the longest."""
    tokenizer, vocab, max_length = _tokenizing(student, max_length)
    return pad_batch([vocab.encode(s) for s in tokenize_ids(tokenizer, texts, max_length)])


@torch.inference_mode()
def predict_logits(student: LoadedStudent, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (N, C) float32 logits, batched by length, returned in input order."""
    student.model.eval()
    seqs = [student.vocab.encode(s) for s in tokenize_ids(student.tokenizer, texts, student.max_length)]
    out = np.zeros((len(seqs), student.arch.num_labels), dtype=np.float32)
    for idx in length_batches(np.array([len(s) for s in seqs]), batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx])
        out[idx] = student.model.logits(ids, mask).float().numpy()
    return out


# ---------------------------------------------------------------- token classification

def word_ids(student: LoadedStudent | tuple[Any, VocabMap], sentences: Sequence[Sequence[str]],
             max_length: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pre-split sentences -> (student piece ids per sentence, first-piece position per covered word)."""
    from components.lib.core.tokens import encode_words

    tokenizer, vocab, max_length = _tokenizing(student, max_length)
    enc = encode_words(tokenizer, sentences, max_length)
    ids = [vocab.encode(x) for x in enc.input_ids]
    firsts = [enc.first_piece[i][: enc.covered(i)] for i in range(len(ids))]
    return ids, firsts


@torch.inference_mode()
def predict_word_logits(student: LoadedStudent, sentences: Sequence[Sequence[str]], batch_size: int = 256) -> list[np.ndarray]:
    """Pre-split sentences -> per sentence (n_covered, C) float32 logits at each word's first piece
    (n_covered: the leading words inside the student's max_length), in input order."""
    if not student.arch.per_token:
        raise UserError(f"student ({student.arch.task}) is not a token-classification student")
    student.model.eval()
    ids, firsts = word_ids(student, sentences)

    def forward(batch_ids, mask, rows, cols):
        return student.model.logits_at(batch_ids, mask, torch.from_numpy(rows), torch.from_numpy(cols)).float().numpy()

    return word_outputs(id_batches(ids, batch_size), firsts, student.arch.num_labels, forward)


def id_batches(ids: Sequence[np.ndarray], batch_size: int):
    """(sentence indices, padded ids, mask) over length-sorted batches of student id sequences."""
    for idx in length_batches(np.array([len(s) for s in ids]), batch_size):
        yield (idx, *pad_batch([ids[i] for i in idx]))


def predict_tags(student: LoadedStudent, sentences: Sequence[Sequence[str]], batch_size: int = 256,
                 decoding: str = "constrained") -> list[list[str]]:
    """Tag names for every word (words past max_length get the O tag), decoded as `decoding`
    (core/decode.py; the default is evaluate.decoding's)."""
    from components.lib.core.decode import decode_tags

    logits = predict_word_logits(student, sentences, batch_size)
    return decode_tags(logits, [len(s) for s in sentences], student.label_names, decoding)
