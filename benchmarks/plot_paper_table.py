"""Plots and the Markdown table of benchmarks/paper_table.py, from its result JSON.

    python benchmarks/plot_paper_table.py benchmarks/results/imdb.json   # re-render .md and .png files

plot_accuracy: grouped bars, test accuracy per model (teacher, TF-IDF + logistic regression when
  the result has it, student modes) and label budget, error bars = std over seeds.
plot_speed:    accuracy vs examples/s at batch 256 (log x), teacher and student points per budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"teacher": "teacher (MiniLM)", "tfidf": "TF-IDF + logistic regression", "labels_only": "labels-only",
         "hard": "hard", "soft": "soft", "soft_repr": "soft+repr"}


def _models(result: dict) -> list[str]:
    """teacher, the TF-IDF baseline (when every budget has it: results before it have none), the student modes."""
    tfidf = ["tfidf"] if all("tfidf" in row for row in result["budgets"].values()) else []
    return ["teacher", *tfidf, *result["modes"]]


def _params(result: dict, model: str) -> str:
    if model == "tfidf":  # its vocabulary, so its size, grows with the label budget
        return " / ".join(f"{row['tfidf']['params'] / 1e3:.1f}k" for row in result["budgets"].values())
    return f"{(result['params_teacher'] if model == 'teacher' else result['params_student']) / 1e6:.2f}M"


def _pm(cell: dict) -> str:
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"


def markdown(result: dict) -> str:
    """Mean ± std test accuracy per model and budget, then size/speed and the targets."""
    budgets = list(result["budgets"])
    seeds = result["seeds"]
    test = result["test_set"]
    lines = [
        f"### IMDB: teacher vs distilled BiLSTM students ({result['preset']} run)",
        "",
        f"Test accuracy, mean ± std over {len(seeds)} seed(s) {seeds}; "
        f"{test['rows'][0] if len(test['rows']) == 1 else test['rows']} test reviews"
        f"{' (subsampled)' if test['subsampled'] else ' (the full official test split)'}.",
        "",
        "| model | " + " | ".join(f"{b} labels/class" for b in budgets) + " | params | ex/s (batch 256) |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: |",
    ]
    speed = result["throughput_ex_per_s"]
    for m in _models(result):
        lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(_pm(result["budgets"][b][m]) for b in budgets)
                     + f" | {_params(result, m)} | {speed[m]['mean']:.1f} |")
    lines += [
        "",
        f"- Retention ({NAMES[result['default_student']]} / teacher) at {result['retention_budget']}/class: "
        f"{result['retention']:.3f}; by budget: " + ", ".join(f"{b}: {v:.3f}" for b, v in result["retention_by_budget"].items()),
        "- Gain over labels-only: " + ", ".join(f"{b}/class {v:+.3f}" for b, v in result["gain_over_labels_only"].items()),
        *(["- Gain over TF-IDF + logistic regression (C chosen on dev): "
           + ", ".join(f"{b}/class {v:+.3f}" for b, v in result["gain_over_tfidf"].items())]
          if result.get("gain_over_tfidf") else []),
        f"- Compression {result['compression']:.1f}x; speed-up {result['speedup']:.1f}x torch, "
        f"{result['speedup_onnx']:.1f}x ONNX Runtime (student vs teacher, batch 256, same process)",
        f"- Pseudo-labelling: {result['pseudo_label_ex_per_s'] or float('nan'):.1f} examples/s",
        "",
        "| target | value | threshold | margin | |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for t in result["targets"]:
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        margin = "–" if t["margin"] is None else f"{t['margin']:+.3f}"
        lines.append(f"| {t['target']} | {value} | {t['threshold']:g} | {margin} | {'PASS' if t['pass'] else 'MISS'} |")
    lines.append("")
    return "\n".join(lines)


def print_targets(result: dict) -> None:
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.4f}"
        margin = "n/a" if t["margin"] is None else f"{t['margin']:+.4f}"
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}: {value} (>= {t['threshold']:g}, margin {margin}) — {t['note']}")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(result: dict, path: Path) -> None:
    import numpy as np

    plt = _plt()
    budgets = list(result["budgets"])
    models = _models(result)
    width = 0.8 / len(models)
    x = np.arange(len(budgets))
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(budgets) * len(models) / 3, 4.5))
    for i, m in enumerate(models):
        means = [result["budgets"][b][m]["mean"] for b in budgets]
        stds = [result["budgets"][b][m]["std"] for b in budgets]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=NAMES.get(m, m),
                      hatch="//" if m == "teacher" else None, edgecolor="black", linewidth=0.5)
        for bar, v, s in zip(bars, means, stds, strict=True):
            ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v + s), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, rotation=90)
    lo = min(result["budgets"][b][m]["mean"] - result["budgets"][b][m]["std"] for b in budgets for m in models)
    hi = max(result["budgets"][b][m]["mean"] + result["budgets"][b][m]["std"] for b in budgets for m in models)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.15, hi + 0.12))  # headroom for the labels and the legend
    ax.set_xticks(x, [f"{b} labels/class" for b in budgets])
    ax.set_ylabel("test accuracy")
    n = len(result["seeds"])
    ax.set_title(f"IMDB ({result['preset']}): accuracy per model, mean{' ± std' if n > 1 else ''} over {n} seed(s)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(models), frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speed(result: dict, path: Path) -> None:
    plt = _plt()
    budgets = list(result["budgets"])
    speed = result["throughput_ex_per_s"]
    markers = {b: mk for b, mk in zip(budgets, "os^Dv", strict=False)}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    colors = {m: f"C{i}" for i, m in enumerate(_models(result))}
    for b in budgets:
        for m in _models(result):
            cell = result["budgets"][b][m]
            ax.errorbar([cell.get("ex_per_s", speed[m]["mean"])], [cell["mean"]], yerr=[cell["std"]], fmt=markers[b], color=colors[m],
                        markersize=8 if m == "teacher" else 6, capsize=3,
                        label=f"{NAMES.get(m, m)}, {b}/class")
    ax.set_xscale("log")
    ax.set_xlabel("examples/s at batch 256 (log scale; raw text in, tokenisation included)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"IMDB ({result['preset']}): accuracy vs speed; student {result['speedup']:.0f}x faster, "
                 f"{result['compression']:.0f}x smaller")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path, help="result JSON of benchmarks/paper_table.py")
    args = p.parse_args()
    result = json.loads(args.result.read_text())
    args.result.with_suffix(".md").write_text(markdown(result))
    plot_accuracy(result, args.result.with_suffix(".png"))
    plot_speed(result, args.result.with_name(args.result.stem + "_speed.png"))
    print(markdown(result))
    print_targets(result)


if __name__ == "__main__":
    main()
