"""Load and score a Hugging Face encoder classifier (the teacher). No MLflow, no kfp, no files
written: fine-tuning lives in components/finetune_teacher/, callers resolve model refs
(`runs:/…`, `packaged:…`) with tracking/runs.py resolve_model_ref first.

Scoring sorts texts by token length and batches neighbours, so a batch pads to its own longest
text instead of max_length; on CPU that is most of the speed-up over a naive loop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.core.torch_utils import length_batches
from components.lib.core.truncation import tokenize_truncated

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_args(device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of the autocast scoring runs under on `device`: bf16 (else fp16) on CUDA, off elsewhere."""
    use_amp = device.type == "cuda"
    return use_amp, (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)


def compute_dtype(model: torch.nn.Module, device: torch.device) -> str:
    """The dtype the teacher computes in on `device` (e.g. 'bfloat16', 'float32'): part of what a stored score depends on."""
    use_amp, amp_dtype = autocast_args(device)
    return str(amp_dtype if use_amp else next(model.parameters()).dtype).removeprefix("torch.")


def tokenizer_dir(model_dir: str | Path) -> Path | str:
    """Where the tokenizer lives: beside the weights, or in an MLflow transformers model's
    components/tokenizer/ (mlflow.transformers keeps it apart from model/)."""
    path = Path(model_dir)
    if not path.is_dir():
        return model_dir  # a hub name
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return path
    for cand in (path.parent / "components" / "tokenizer", path / "components" / "tokenizer"):
        if cand.is_dir():
            return cand
    return path


def weights_digest(model_dir: str | Path, model: torch.nn.Module | None = None) -> str:
    """sha256 of the weights file (several shards: of their digests in name order).
    Without local files (a hub name) it hashes the loaded state dict instead."""
    path = Path(model_dir)
    files = sorted({f for pat in WEIGHT_PATTERNS for f in path.glob(pat)}) if path.is_dir() else []
    if not files:
        if model is None:
            raise UserError(f"{model_dir}: no weights file (model.safetensors) found to digest")
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    from components.lib.contracts.files import sha256_file

    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _reinit_head(model: torch.nn.Module) -> None:
    """Re-initialise every module outside the encoder (the classification head)."""
    prefix = model.base_model_prefix
    for name, module in model.named_modules():
        if name and not name.startswith(prefix) and not list(module.children()):
            model._init_weights(module)


_HEADS = {Task.sequence_classification: "ForSequenceClassification", Task.token_classification: "ForTokenClassification"}


def _auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task not in _HEADS:
        raise UserError(f"task '{task}': expected one of {sorted(_HEADS)}")
    return AutoModelForTokenClassification if task == Task.token_classification else AutoModelForSequenceClassification


def load_teacher(path_or_name: str | Path, num_labels: int | None = None, label_names: Sequence[str] | None = None,
                 task: Task | str = Task.sequence_classification):
    """(model, tokenizer) for sequence (or, with task=Task.token_classification, token) classification, in eval mode.

    label_names: set id2label/label2id and give a fresh head, unless the checkpoint already is a
    classifier over exactly these names (then its head is kept, e.g. to continue training).
    Without them the checkpoint's own head and labels are used (an already fine-tuned teacher)."""
    from transformers import AutoConfig, AutoTokenizer

    auto = _auto_class(task)
    head = _HEADS[task]
    src = str(path_or_name)
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(src)), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{src}: cannot load a model config/tokenizer ({str(err).splitlines()[0]})") from None
    kwargs: dict = {}
    fresh_head = False
    if label_names is not None:
        names = list(label_names)
        if num_labels is not None and num_labels != len(names):
            raise UserError(f"num_labels={num_labels} but {len(names)} label names given")
        old = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
        is_classifier = any(head in a for a in (config.architectures or []))
        fresh_head = not (is_classifier and old == names)
        kwargs = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
            "ignore_mismatched_sizes": True,
        }
    elif num_labels is not None:
        kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    try:
        model = auto.from_pretrained(src, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as err:
        what = "token classifier" if task == Task.token_classification else "sequence classifier"
        raise UserError(f"{src}: cannot load a {what} ({str(err).splitlines()[0]})") from None
    if fresh_head:
        _reinit_head(model)
    model.eval()
    return model, tokenizer


def head_is_trained(path_or_name: str | Path, task: Task | str = Task.sequence_classification) -> bool:
    """True when the checkpoint holds classifier weights (config names a *ForSequenceClassification,
    or *ForTokenClassification for token classification)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path_or_name), trust_remote_code=False)
    return any(_HEADS[task] in a for a in (config.architectures or []))


def label_names_of(model: torch.nn.Module) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in sorted(id2label)]


def token_lengths(tokenizer, texts: Sequence[str], max_length: int, keep_tail: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """Tokenise without padding: (encodings as lists of ids, lengths (N,)); keep_tail > 0: head+tail cut."""
    enc = tokenize_truncated(tokenizer, texts, max_length, keep_tail, **({} if keep_tail else {"padding": False}))
    ids = enc["input_ids"]
    return enc, np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    # hidden (B, T, H), mask (B, T) -> (B, H)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): padding contributes nothing
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise UserError(f"pooling '{pooling}': expected cls or mean")


def score(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int,
    layer: int | None = None,
    pooling: str = "cls",
    device: torch.device | str | None = None,
    progress=None,
    keep_tail: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """logits float32 (N, C) and, when `layer` is given, that hidden layer pooled: float32 (N, H).
    keep_tail > 0: texts longer than max_length are cut head+tail (core/truncation.py).

    layer indexes hidden_states (0 = embeddings, -1 = last). Batches are formed over the
    length-sorted texts and the outputs are put back in input order. `progress`, if given, is
    called with the number of rows finished after each batch."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    n = len(texts)
    num_labels = model.config.num_labels
    hidden_size = model.config.hidden_size
    logits_out = np.empty((n, num_labels), dtype=np.float32)
    reprs_out = np.empty((n, hidden_size), dtype=np.float32) if layer is not None else None
    if n == 0:
        return logits_out, reprs_out
    n_layers = model.config.num_hidden_layers + 1  # hidden_states includes the embeddings
    if layer is not None and not -n_layers <= layer < n_layers:
        raise UserError(f"layer {layer} out of range for a model with {n_layers - 1} layers (-{n_layers}..{n_layers - 1})")
    enc, lengths = token_lengths(tokenizer, texts, max_length, keep_tail)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    use_amp, amp_dtype = autocast_args(device)
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size):
            feats = [{k: enc[k][i] for k in keys} for i in idx]
            batch = tokenizer.pad(feats, padding="longest", return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                out = model(**batch, output_hidden_states=layer is not None)
            logits_out[idx] = out.logits.float().cpu().numpy()
            if layer is not None:
                pooled = _pool(out.hidden_states[layer].float(), batch["attention_mask"], pooling)
                reprs_out[idx] = pooled.cpu().numpy()
            if progress is not None:
                progress(len(idx))
    return logits_out, reprs_out


def score_words(
    model: torch.nn.Module,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    max_length: int,
    batch_size: int,
    layer: int | None = None,
    device: torch.device | str | None = None,
    progress=None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per-word outputs of a token classifier over pre-split sentences.

    Returns logits[i] float32 (n_i, C) and, when `layer` is given, that hidden layer's state
    reprs[i] float32 (n_i, H), both read at each word's first sub-piece; n_i is the number of
    leading words inside max_length (tokens.WordEncoding.covered). Batches are length-sorted;
    outputs come back in input order."""
    from components.lib.core.tokens import encode_words

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    n = len(sentences)
    logits_out: list[np.ndarray] = [np.zeros((0, model.config.num_labels), np.float32)] * n
    reprs_out: list[np.ndarray] | None = [np.zeros((0, model.config.hidden_size), np.float32)] * n if layer is not None else None
    if n == 0:
        return logits_out, reprs_out
    n_layers = model.config.num_hidden_layers + 1
    if layer is not None and not -n_layers <= layer < n_layers:
        raise UserError(f"layer {layer} out of range for a model with {n_layers - 1} layers (-{n_layers}..{n_layers - 1})")
    enc = encode_words(tokenizer, sentences, max_length)
    lengths = np.fromiter((len(x) for x in enc.input_ids), dtype=np.int64, count=n)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    use_amp, amp_dtype = autocast_args(device)
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size):
            t = int(lengths[idx].max())
            ids = np.full((len(idx), t), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), t), dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, : lengths[i]] = enc.input_ids[i]
                mask[r, : lengths[i]] = 1
            batch = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                out = model(**batch, output_hidden_states=layer is not None)
            logits = out.logits.float().cpu().numpy()  # (B, T, C)
            hidden = out.hidden_states[layer].float().cpu().numpy() if layer is not None else None  # (B, T, H)
            for r, i in enumerate(idx):
                fp = enc.first_piece[i][: enc.covered(i)]
                logits_out[i] = logits[r, fp]
                if reprs_out is not None:
                    reprs_out[i] = hidden[r, fp]
            if progress is not None:
                progress(len(idx))
    return logits_out, reprs_out
