"""ONNX machinery of the exported student, both tasks: export with dynamic batch and sequence
axes, ONNX Runtime sessions and inference tokenised exactly as lib/models/student_io.py, the parity
check against torch (per text, or per word for a tagger), and dynamic int8 quantisation kept
only when the headline metric holds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.lib.evaluation import report
from components.lib.settings.config import PipelineConfig

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
INPUT_NAMES = ["input_ids", "attention_mask"]


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch: the exported graph is wrong, never ship it."""


def export_onnx(student, path: Path, opset: int) -> Path:
    """The student's logits(input_ids, attention_mask) -> (B, C) as ONNX, batch and sequence dynamic;
    a tagger's graph is logits_at(input_ids, attention_mask, rows, cols) -> (N, C), the N words dynamic."""
    import torch

    from components.lib.core.student import LogitsOnly
    from components.lib.core.tokens import WORD_GRAPH_INPUTS
    from components.lib.models.student_io import encode

    ids, mask = encode(student, ["an example to trace", "a second, longer example to trace the graph with"])
    per_token = student.arch.per_token
    # A tagger's graph takes the first pieces' (row, position) and computes the head there alone.
    args, names = ((ids, mask, *mask.nonzero(as_tuple=True)), [*INPUT_NAMES, *WORD_GRAPH_INPUTS]) if per_token \
        else ((ids, mask), INPUT_NAMES)
    wrapper = LogitsOnly(student.model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and this graph
    # (LSTMs over a gathered, length-reversed input) exports cleanly the classic way.
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns that LSTM shapes may not generalise across batch sizes; check_parity and
        # the tests run other batch and sequence sizes through the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*variable length with LSTM.*")
        # A tagger's rows/cols gather: the exporter warns for negative indices, which none of its are
        # (rows, first-piece positions and lengths - 1 - position all >= 0).
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        words = {"rows": {0: "words"}, "cols": {0: "words"}, "logits": {0: "words"}} if per_token else {"logits": {0: "batch"}}
        torch.onnx.export(
            wrapper, args, str(path), dynamo=False, opset_version=opset, input_names=names, output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, **words},
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_predict_logits(session, student, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (N, C) logits from ONNX Runtime, tokenised exactly as student_io.predict_logits."""
    from components.lib.core.torch_utils import length_batches
    from components.lib.models.student_io import pad_batch, tokenize_ids

    seqs = [student.vocab.encode(s) for s in tokenize_ids(student.tokenizer, texts, student.max_length)]
    out = np.zeros((len(seqs), len(student.label_names)), dtype=np.float32)
    for idx in length_batches(np.array([len(s) for s in seqs]), batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx])  # (B, T) int64 each
        out[idx] = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    return out


def check_parity(student, session, texts: list[str], batch_size: int = 64) -> float:
    """Max |torch - ORT| logit over texts on identical padded batches; raises ParityError past 1e-4
    or on any argmax difference."""
    import torch

    from components.lib.models.student_io import encode

    worst = 0.0
    for i in range(0, len(texts), batch_size):
        ids, mask = encode(student, texts[i : i + batch_size])
        with torch.inference_mode():
            ref = student.model.logits(ids, mask).float().numpy()  # (B, C)
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        flips = int((ref.argmax(1) != got.argmax(1)).sum())
        if diff > PARITY_ATOL or flips:
            raise ParityError(f"ONNX parity failed on rows {i}..{i + len(ids) - 1}: max |Δlogit| {diff:.2e} "
                              f"(limit {PARITY_ATOL:.0e}), {flips} argmax differences")
    return worst


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly): LSTM, MatMul, Gather."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


def try_int8(fp32: Path, out: Path, cfg: PipelineConfig, *, metric: str, label: str, base: float,
             measure: Callable[[Any], float], predict: Callable[[Any, list], Any], items: list, unit: str) -> dict:
    """Quantize, re-measure the test metric (measure(session)) and speed (predict(session, batch));
    keep the int8 file only if the metric drops <= export.max_quant_drop."""
    quantize_int8(fp32, out)
    sess8, sess32 = ort_session(out, cfg.export.num_threads), ort_session(fp32, cfg.export.num_threads)
    value8 = measure(sess8)
    timing = report.repeat_to(items, cfg.evaluate.throughput_rows)
    bs = cfg.evaluate.batch_size
    speed8 = report.throughput(lambda b: predict(sess8, b), timing, bs)
    speed32 = report.throughput(lambda b: predict(sess32, b), timing, bs)
    drop = base - value8
    kept = drop <= cfg.export.max_quant_drop
    reason = (f"{label} {value8:.4f} vs fp32 {base:.4f} (drop {drop:+.4f}, limit {cfg.export.max_quant_drop})"
              + ("" if kept else ": discarded"))
    log.info("int8: %s; %.0f vs %.0f %s/s; %.1f vs %.1f MB", reason, speed8, speed32, unit,
             out.stat().st_size / 2**20, fp32.stat().st_size / 2**20)
    result = {metric: value8, f"{metric}_drop": drop, "kept": kept, "reason": reason, "bytes": out.stat().st_size,
              "throughput": speed8, "throughput_fp32": speed32, "path": str(out) if kept else None}
    if not kept:
        out.unlink()
    return result


# ---------------------------------------------------------------- token classification: per-word outputs

def onnx_predict_word_logits(session, student, sentences: Sequence[Sequence[str]], batch_size: int = 256) -> list[np.ndarray]:
    """Pre-split sentences -> per sentence (n_covered, C) logits from ONNX Runtime, aligned exactly
    as student_io.predict_word_logits (first piece of each covered word)."""
    from components.lib.core.tokens import graph_word_logits, word_outputs
    from components.lib.models.student_io import id_batches, word_ids

    ids, firsts = word_ids(student, sentences)
    return word_outputs(id_batches(ids, batch_size), firsts, len(student.label_names),
                        lambda b, m, rows, cols: graph_word_logits(session, b.numpy(), m.numpy(), rows, cols))


def check_word_parity(student, session, sentences: Sequence[Sequence[str]], batch_size: int = 64) -> float:
    """Max |torch - ORT| per-word logit over the sentences on identical padded batches; raises
    ParityError past 1e-4 or on any per-word argmax difference."""
    import torch

    from components.lib.core.tokens import first_pieces_index, graph_word_logits
    from components.lib.models.student_io import pad_batch, word_ids

    ids, firsts = word_ids(student, sentences)
    worst = 0.0
    for lo in range(0, len(ids), batch_size):
        batch, mask = pad_batch(ids[lo : lo + batch_size])
        rows, cols, _ = first_pieces_index(firsts[lo : lo + batch_size])  # only what is read
        with torch.inference_mode():
            ref_w = student.model.logits_at(batch, mask, torch.from_numpy(rows), torch.from_numpy(cols)).float().numpy()
        got_w = graph_word_logits(session, batch.numpy(), mask.numpy(), rows, cols)  # (words, C)
        diff = float(np.abs(ref_w - got_w).max()) if len(ref_w) else 0.0
        worst = max(worst, diff)
        flips = int((ref_w.argmax(-1) != got_w.argmax(-1)).sum()) if len(ref_w) else 0
        if diff > PARITY_ATOL or flips:
            raise ParityError(f"ONNX parity failed on sentences {lo}..{lo + len(batch) - 1}: max |Δlogit| {diff:.2e} "
                              f"(limit {PARITY_ATOL:.0e}), {flips} per-word argmax differences")
    return worst
