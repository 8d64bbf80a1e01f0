"""The table `distilflow run` prints at the end: teacher vs students from report.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _num(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, int | float) or value != value else format(value, fmt)


def _millions(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value / 1e6:.2f}M"


def summary_table(report: dict[str, Any]) -> str:
    """One row per model (the teacher, the TF-IDF baseline when evaluated, every student):
    accuracy (entity F1 for token classification), macro-F1, params, compression, examples/s,
    speed-up vs the teacher."""
    metric = report.get("metric", "accuracy")
    title = "entity-F1" if metric == "f1" else metric
    teacher = report.get("teacher") or {}
    chosen = (report.get("student") or {}).get("mode")
    students = report.get("students") or ({chosen: report["student"]} if "student" in report else {})
    t_params, t_speed = teacher.get("params"), teacher.get("throughput")
    rows = [("teacher", teacher)]
    if report.get("tfidf"):  # the classic baseline: TF-IDF + logistic regression on the same labels
        rows.append(("baseline (TF-IDF + LR)", report["tfidf"]))
    for mode, m in students.items():
        role = "student" if mode == chosen else ("baseline" if mode == "labels-only" else "ablation")
        rows.append((f"{role} ({mode})", m))
    header = f"{'model':<26}{title:>10}{'macro-F1':>10}{'params':>9}{'compress':>10}{'ex/s':>9}{'speedup':>9}"
    lines = [header, "-" * len(header)]
    for name, m in rows:
        params, speed = m.get("params"), m.get("throughput")
        compress = t_params / params if isinstance(params, int | float) and params and t_params else None
        speedup = speed / t_speed if isinstance(speed, int | float) and t_speed else None
        lines.append(
            f"{name:<26}{_num(m.get(metric), '.3f'):>10}{_num(m.get('macro_f1'), '.3f'):>10}{_millions(params):>9}"
            f"{_num(compress, '.1f') + 'x':>10}{_num(speed, '.0f'):>9}{_num(speedup, '.1f') + 'x':>9}"
        )
    lines.append(f"retention (student/teacher {title}): {_num(report.get('retention'), '.3f')}")
    return "\n".join(lines)


def run_footer(seconds: float, cached: Sequence[str], executed: Sequence[str], report_path: str) -> str:
    reused = ", ".join(cached) if cached else "none"
    return (f"pipeline finished in {seconds:.1f} s; executed: {', '.join(executed) or 'none'}; "
            f"reused from cache: {reused}\nreport: {report_path}")
