"""Metrics, timing and plots of the evaluate step (report.md is lib/evaluation/report_md.py).

Metrics come from scikit-learn where it has them; expected calibration error is the one it lacks.
Timing helpers take plain callables so the teacher (torch), the student (torch) and the student
(ONNX Runtime) are measured the same way, in the same process, on the same texts.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------- metrics

def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities, stable in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE over equal-width confidence bins (i/n, (i+1)/n]: sum_b |B|/N * |acc(B) - conf(B)|."""
    probs = np.asarray(probs, dtype=np.float64)  # (N, C)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # ceil(conf * n) - 1 puts a confidence exactly on an upper edge into the lower bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], ece_bins: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and ECE of (N, C) logits."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = np.asarray(labels)
    pred = np.asarray(logits).argmax(axis=1)
    classes = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "ece": expected_calibration_error(softmax(logits), labels, ece_bins),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        },
        # rows = true class, columns = predicted class (scikit-learn's convention)
        "confusion_matrix": confusion_matrix(labels, pred, labels=classes).tolist(),
    }


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Share of examples where two models predict the same class."""
    return float((np.asarray(logits_a).argmax(axis=1) == np.asarray(logits_b).argmax(axis=1)).mean())


# ---------------------------------------------------------------- size and speed

def dir_size_bytes(path: Path, patterns: Sequence[str] = ("*.safetensors", "*.bin", "*.onnx")) -> int:
    """On-disk size of the weight files in a model dir (tokenizer and JSON files excluded)."""
    return sum(f.stat().st_size for pat in patterns for f in Path(path).glob(pat) if f.is_file())


def repeat_to(texts: Sequence[str], n: int) -> list[str]:
    """The first n texts, cycling when there are fewer, so timings always see n examples."""
    if not texts:
        raise ValueError("no texts to time")
    return [texts[i % len(texts)] for i in range(n)]


def throughput(predict: Callable[[list[str]], Any], texts: Sequence[str], batch_size: int, warmup: int = 1) -> float:
    """Examples/s of predict over texts in batches (raw text in, so tokenisation is included)."""
    texts = list(texts)
    for _ in range(warmup):
        predict(texts[:batch_size])
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        predict(texts[i : i + batch_size])
    return len(texts) / (time.perf_counter() - start)


def latency_ms(predict: Callable[[list[str]], Any], texts: Sequence[str], runs: int, warmup: int = 3) -> dict[str, float]:
    """p50/p95/mean milliseconds of single-example calls over `runs` texts (cycled)."""
    texts = repeat_to(texts, runs)
    for t in texts[:warmup]:
        predict([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        predict([t])
        times.append((time.perf_counter() - start) * 1000.0)
    arr = np.asarray(times)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def cpu_flags() -> list[str]:
    """The SIMD extensions /proc/cpuinfo lists (what decides which kernels numpy, torch and ONNX
    Runtime run, and so why the same run differs across machines), in SIMD_FLAGS order."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


def environment() -> dict[str, Any]:
    """Where the timings were taken: CPU, thread counts, library versions."""
    import torch

    versions = {}
    for pkg in ("torch", "transformers", "onnxruntime", "onnx", "numpy", "scikit-learn", "mlflow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatched to
        "torch_threads": torch.get_num_threads(),
        # HF tokenizers batch-encode on all cores unless this is "false" (unset = parallel)
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# ---------------------------------------------------------------- MLflow-safe flat metrics

_BAD_KEY = re.compile(r"[^\w.\- /]")


def flat_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """Nested dict -> {"a.b.c": float}; lists and strings dropped; keys made MLflow-safe ('+' -> '_')."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flat_metrics(value, f"{prefix}{_BAD_KEY.sub('_', str(key))}."))
    elif isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix.rstrip(".")] = float(obj)
    return out


# ---------------------------------------------------------------- plots (matplotlib Agg)

def plot_confusion(matrix: Sequence[Sequence[int]], label_names: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_speed(points: Sequence[tuple[str, float, float]], title: str, path: Path,
                        ylabel: str = "test accuracy", xlabel: str = "examples/s (log scale)") -> None:
    """points: (name, examples/s, accuracy); log x so a 10-100x speed-up stays readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    colors: dict[str, str] = {}
    for name, speed, acc in points:
        model = name.split(" (")[0]  # one colour per model, one marker per runtime
        colors.setdefault(model, f"C{len(colors)}")
        marker = "s" if model == "teacher" else ("^" if "onnx" in name.lower() else "o")
        ax.scatter([speed], [acc], s=70, marker=marker, color=colors[model], label=f"{name}: {acc:.3f}, {speed:,.0f}/s")
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    accs = [p[2] for p in points]
    ax.set_ylim(max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.03))
    speeds = [p[1] for p in points]
    ax.set_xlim(min(speeds) / 2, max(speeds) * 3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_f1_bars(fig, ax, title: str, path: Path) -> None:
    """The entity-F1 bar charts' common finish: y label, title, legend, grid; saved as PNG and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("entity F1")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_type_f1(per_model: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    """Grouped bars: entity F1 per type (x) for each model (one colour each); per_model[name][type]["f1"]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted({t for per_type in per_model.values() for t in per_type})
    n = max(1, len(per_model))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(types) + 2.5), 4.2))
    x = np.arange(len(types))
    for k, (name, per_type) in enumerate(per_model.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, [per_type.get(t, {}).get("f1", 0.0) for t in types], width, label=name)
    ax.set_xticks(x, labels=types, rotation=30 if len(types) > 6 else 0)
    ax.set_ylim(0, 1.05)
    _save_f1_bars(fig, ax, title, path)


def plot_per_language_f1(per_model: dict[str, dict[str, float]], title: str, path: Path) -> None:
    """Grouped bars: entity F1 per language (x) for each model (one colour each); per_model[name][lang] = F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted({lang for f1s in per_model.values() for lang in f1s})
    n = max(1, len(per_model))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * n * len(langs) + 2.0), 4.2))
    x = np.arange(len(langs))
    for k, (name, f1s) in enumerate(per_model.items()):
        bars = ax.bar(x + (k - (n - 1) / 2) * width, [f1s.get(lang, 0.0) for lang in langs], width, label=name)
        # the gaps between models per language are the point of the plot: print them, not just draw them
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, labels=langs)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("language")
    _save_f1_bars(fig, ax, title, path)
