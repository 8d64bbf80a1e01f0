"""What both evaluate paths share: which students to evaluate, which one is the headline, the
timing protocol (items/s at evaluate.batch_size, batch-1 latency; every model timed once a round
over evaluate.timing_rounds rounds, interleaved, the median kept with its spread), the dev-split
block every later decision reads, and the report.json body.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.lib.core.errors import UserError
from components.lib.evaluation import report
from components.lib.settings.config import PipelineConfig, StudentMode


def find_students(cfg: PipelineConfig, student_dirs: dict[str, Path] | None) -> dict[str, Path]:
    """mode -> dir: the explicit mapping (kfp passes artifact paths), else every trained mode's dir."""
    if student_dirs is not None:
        dirs = {StudentMode(m).value: Path(p) for m, p in student_dirs.items()}
        missing = [f"{m}: {p}" for m, p in dirs.items() if not (p / "config.json").exists()]
        if missing:
            raise UserError(f"student dir without config.json ({'; '.join(missing)})")
    else:
        dirs = {m.value: cfg.student_dir(m) for m in cfg.student_modes if (cfg.student_dir(m) / "config.json").exists()}
    if not dirs:
        expected = ", ".join(str(cfg.student_dir(m)) for m in cfg.student_modes)
        raise UserError(f"no trained student found (looked in {expected}); run distill-student first")
    return dirs


def chosen_mode(cfg: PipelineConfig, modes: list[str]) -> str:
    """The configured mode when it was evaluated, else the first distilled (non-baseline) one."""
    if cfg.student.mode.value in modes:
        return cfg.student.mode.value
    distilled = [m for m in modes if m != StudentMode.labels_only.value]
    return (distilled or modes)[0]


def timings(predict, texts: list, cfg: PipelineConfig) -> tuple[float, dict[str, float]]:
    """(items/s at evaluate.batch_size over throughput_rows items, batch-1 latency p50/p95/mean ms)."""
    bs = cfg.evaluate.batch_size
    return report.throughput(predict, report.repeat_to(texts, cfg.evaluate.throughput_rows), bs), \
        report.latency_ms(predict, texts, cfg.evaluate.latency_runs)


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's timing order: the names rotated by r, so no model always goes first (or last)."""
    k = r % len(names)
    return names[k:] + names[:k]


def interleaved_timings(models: dict[str, Callable], texts: list, cfg: PipelineConfig) -> dict[str, dict]:
    """name -> {throughput (median items/s), throughput_rounds, latency_ms (median p50/p95/mean over
    rounds), latency_p50_rounds}. Each round times every model once, the order rotated each round, so
    a burst of other work on the machine lands on all models alike rather than on one."""
    names = list(models)
    rounds: dict[str, list] = {n: [] for n in names}
    for r in range(cfg.evaluate.timing_rounds):
        for n in round_order(names, r):
            rounds[n].append(timings(models[n], texts, cfg))
    out = {}
    for n in names:
        speeds = [s for s, _ in rounds[n]]
        lats = [lat for _, lat in rounds[n]]
        out[n] = {"throughput": float(np.median(speeds)), "throughput_rounds": speeds,
                  "latency_ms": {k: float(np.median([lat[k] for lat in lats])) for k in lats[0]},
                  "latency_p50_rounds": [lat["p50"] for lat in lats]}
    return out


def ratio_rounds(a: list[float], b: list[float]) -> dict[str, float | list[float]]:
    """Median, min and max of the per-round ratios a_r / b_r (same round: same machine state)."""
    r = [x / y for x, y in zip(a, b, strict=True)]
    return {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r)), "rounds": r}


def dev_block(teacher: dict, students: dict[str, dict], mode: str, metric: str, rows: int,
              tfidf: dict | None = None) -> dict:
    """What export decides on (int8 keep/drop, the champion gate): every model's `metric` on the dev
    split (each model dict's "dev" entry), never test. The baseline is the labels-only student;
    tfidf the TF-IDF + logistic regression model's (its C chosen on this split, as every student's
    epochs were)."""
    t = teacher["dev"][metric]
    s = students[mode]["dev"][metric]
    baseline = StudentMode.labels_only.value
    b = students[baseline]["dev"][metric] if mode != baseline and baseline in students else None
    c = tfidf["dev"][metric] if tfidf is not None else None
    return {
        "split": "dev", "rows": rows, "metric": metric, "teacher": t, "student": s,
        "students": {m: v["dev"][metric] for m, v in students.items()}, "baseline": b,
        "retention": s / t if t else 0.0,
        # strictly better: a tie leaves the distilled student (it was the configured choice)
        "baseline_beats_student": b is not None and b > s + 1e-12,
        "tfidf": c,
        "tfidf_beats_student": c is not None and c > s + 1e-12,
    }


def build_report(cfg: PipelineConfig, teacher: dict, students: dict[str, dict], label_names: list[str],
                 test_rows: int, card: dict | None, metric: str = "accuracy", dev_rows: int = 0,
                 tfidf: dict | None = None) -> dict:
    """The report.json body; `metric` (accuracy, or entity f1 for token classification) is the
    headline score. Test scores are reported; the `dev` block (dev_block) is what export decides on.
    `tfidf`, the classic baseline's entry, is reported beside the labels-only one when given."""
    mode = chosen_mode(cfg, list(students))
    student = students[mode]
    rep = {
        "metric": metric,
        "teacher": teacher,
        "student": student,
        "students": students,
        "retention": student[metric] / teacher[metric] if teacher[metric] else 0.0,
        "dev": dev_block(teacher, students, mode, metric, dev_rows, tfidf),
        "params": {"teacher": teacher["params"], "student": student["params"]},
        "compression": teacher["params"] / student["params"],
        "throughput": {"teacher": teacher["throughput"], "student": student["throughput"],
                       "student_onnx": student["throughput_onnx"]},
        "speedup": student["throughput"] / teacher["throughput"],
        "speedup_onnx": student["throughput_onnx"] / teacher["throughput"],
        "timing_rounds": cfg.evaluate.timing_rounds,
        "latency_ms": {"teacher": teacher["latency_ms"], "student": student["latency_ms"],
                       "student_onnx": student["latency_ms_onnx"]},
        "label_names": label_names,
        "test_rows": test_rows,
        "batch_size": cfg.evaluate.batch_size,
        "throughput_rows": cfg.evaluate.throughput_rows,
        "latency_runs": cfg.evaluate.latency_runs,
        "data_card": card,
        "environment": report.environment(),
    }
    if "throughput_rounds" in student and "throughput_rounds" in teacher:
        # the same ratios per timing round: what a busy machine does to them (README: speed figures)
        rep["speedup_rounds"] = ratio_rounds(student["throughput_rounds"], teacher["throughput_rounds"])
        rep["speedup_onnx_rounds"] = ratio_rounds(student["throughput_onnx_rounds"], teacher["throughput_rounds"])
    baseline = StudentMode.labels_only.value
    if mode != baseline and baseline in students:
        rep["baseline"] = students[baseline]
    if tfidf is not None:
        rep["tfidf"] = tfidf
    return rep
