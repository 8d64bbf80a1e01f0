"""The per-language plot of benchmarks/multilingual_ner.py: student vs teacher entity F1, one point
per language (mean over seeds), with the lines where the student keeps all, 95% and 90% of its
teacher's F1, and the band where the teacher itself fails (F1 < 0.5). A language below the 90% line
is named in red; the weakest retention is easy to find at a glance even for forty languages.

    python benchmarks/plot_languages.py benchmarks/results/ner40.json   # re-render <result>.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def points(summary: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(lang, teacher F1, student F1, retention) per language, weakest retention first."""
    rows = [(lang, v["teacher"]["mean"], v["student"]["mean"], summary["retention"][lang])
            for lang, v in summary["languages"].items()]
    return sorted(rows, key=lambda r: (r[3], r[0]))


def plot_languages(summary: dict[str, Any], path: Path, lines: tuple[float, float, float], fails_below: float,
                   title: str | None = None) -> list[tuple[str, float, float, float]]:
    """Write the scatter to path (PNG): `lines` the three retention lines drawn (the last one colours
    the languages below it red), `fails_below` the teacher F1 under which the band is shaded (the
    benchmark's targets, ner_targets.py). Returns the points drawn, as points() orders them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = points(summary)
    fig, ax = plt.subplots(figsize=(7.2, 6.4))
    ax.axvspan(0, fails_below, color="0.93", zorder=0, label=f"teacher F1 < {fails_below}")
    grid = [0.0, 1.0]
    for r, style in zip(lines, ("-", "--", ":"), strict=True):
        ax.plot(grid, [r * g for g in grid], style, color="0.4", lw=1, label=f"student = {r:.2f} x teacher")
    low = [p for p in drawn if p[3] < lines[-1]]
    ok = [p for p in drawn if p[3] >= lines[-1]]
    for group, colour, name in ((ok, "tab:blue", f"retention >= {lines[-1]:.2f}"), (low, "tab:red", f"retention < {lines[-1]:.2f}")):
        if group:
            ax.scatter([p[1] for p in group], [p[2] for p in group], s=22, color=colour, zorder=3, label=name)
    for lang, teacher, student, retention in drawn:
        ax.annotate(lang, (teacher, student), xytext=(3, 2), textcoords="offset points", fontsize=7,
                    color="tab:red" if retention < lines[-1] else "0.15")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("teacher entity F1 (test)")
    ax.set_ylabel("student entity F1 (test)")
    seeds = summary.get("seeds", 1)
    ax.set_title(title or f"{len(drawn)} languages, retention mean {summary['retention_mean']:.3f}, "
                 f"min {summary['retention_min']:.3f} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.grid(True, lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a multilingual_ner.py result JSON")
    args = parser.parse_args(argv)
    from ner_targets import RETENTION_EACH_MIN, RETENTION_MEAN_MIN, TEACHER_FAILS_BELOW

    plot_languages(json.loads(args.result.read_text()), args.result.with_suffix(".png"),
                   (1.0, RETENTION_MEAN_MIN, RETENTION_EACH_MIN), TEACHER_FAILS_BELOW)
    print(f"wrote {args.result.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
