"""Per-unit running and aggregation of benchmarks/paper_table.py (its CLI, presets and main() live
there; this module never imports it).

run_budget_seed runs every step of one (label budget, seed) through the project's own run(cfg)
functions, each as a resumable unit: run_unit skips a step whose <work-dir>/b<B>/s<S>/done/<step>.json
records the same fingerprint of the settings it depends on (step_keys). aggregate, targets,
wall_by_step and machine turn the unit records into the result JSON's summary.

The components imports are inside the functions: paper_table puts the repo root on sys.path and sets
the offline/tracking environment before any of them runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The same logger name as before the split: log lines still read "paper_table ...".
log = logging.getLogger("paper_table")

MODES = ("labels-only", "hard", "soft", "soft+repr")
KEY = {"labels-only": "labels_only", "hard": "hard", "soft": "soft", "soft+repr": "soft_repr"}
DEFAULT_STUDENT = "soft+repr"
TFIDF = "tfidf"  # report.json's TF-IDF + logistic regression entry: a model row beside the student modes
# Targets of the claim (MiniLM teacher, this CPU): (name, threshold).
RETENTION_MIN, GAIN_MIN, COMPRESSION_MIN, SPEEDUP_MIN = 0.99, 0.05, 10.0, 50.0


def teacher_epochs_for(spec: str | None, budget: int) -> int | None:
    """'3' -> 3 for every budget; '50:10,500:3' -> per budget (None: the config's)."""
    if spec is None:
        return None
    if ":" not in spec:
        return int(spec)
    table = {int(k): int(v) for k, v in (item.split(":") for item in spec.split(","))}
    if budget not in table:
        raise SystemExit(f"--teacher-epochs {spec}: no entry for budget {budget}")
    return table[budget]


# ---------------------------------------------------------------- configs and units

def unit_config(base, args, budget: int, seed: int, unit_dir: Path):
    """The config of one (budget, seed): imdb.yaml + the knobs + --set, every dir inside unit_dir."""
    from components.lib.settings.config import parse_set

    o: dict[str, Any] = {
        "data.labels_per_class": budget, "data.seed": seed, "teacher.seed": seed, "student.seed": seed,
        "student.mode": DEFAULT_STUDENT,
        "data.output_dir": str(unit_dir / "data"), "teacher.output_dir": str(unit_dir / "teacher"),
        "transfer.output_dir": str(unit_dir / "pseudo"), "student.output_dir": str(unit_dir / "student"),
        "evaluate.output_dir": str(unit_dir / "eval"), "export.output_dir": str(unit_dir / "export"),
    }
    if args.transfer_rows is not None:
        o["data.max_transfer_rows"] = args.transfer_rows
    if args.teacher_max_length is not None:
        o["teacher.max_length"] = o["transfer.max_length"] = args.teacher_max_length
    if args.student_max_length is not None:
        o["student.max_length"] = args.student_max_length
    if (epochs := teacher_epochs_for(args.teacher_epochs, budget)) is not None:
        o["teacher.epochs"] = epochs
    for arg, key in (("dev_per_class", "data.dev_per_class"), ("repr_epochs", "student.repr_epochs"),
                     ("soft_epochs", "student.soft_epochs"), ("label_epochs", "student.label_epochs")):
        if getattr(args, arg) is not None:
            o[key] = getattr(args, arg)
    if args.threads:
        for name in ("teacher", "transfer", "student", "evaluate", "export"):
            o[f"{name}.num_threads"] = args.threads
    if args.no_tracking:
        o["tracking.enabled"] = False
    for item in args.overrides:
        key, value = parse_set(item)
        o[key] = value
    return base.with_overrides(o), o


# Settings that change no result: left out of the fingerprints so e.g. --threads keeps done units.
_IRRELEVANT = {"output_dir", "num_threads"}
# Settings added after units were recorded: left out while at their default (which behaves as before
# the setting existed), so those units stay done.
_ADDED = {"teacher": {"group_by_length": False}}


def section(cfg, name: str) -> dict:
    """A config section without the keys that never change a number (nor added ones at their default)."""
    added = _ADDED.get(name, {})
    return {k: v for k, v in getattr(cfg, name).model_dump(mode="json").items()
            if k not in _IRRELEVANT and not (k in added and v == added[k])}


def step_keys(cfg, test_rows: int | None, modes: list[str], test_exclude: int = 0) -> dict[str, dict]:
    """What each step's result depends on; a step's key includes its inputs' keys."""
    prepare = {"data": section(cfg, "data"), "task": cfg.task.value}
    teacher = {**prepare, "teacher": section(cfg, "teacher")}
    pseudo = {**teacher, "transfer": section(cfg, "transfer")}
    keys = {"prepare-data": prepare, "finetune-teacher": teacher, "pseudo-label": pseudo}
    student = {k: v for k, v in section(cfg, "student").items() if k != "mode"}
    for mode in modes:
        keys[f"distill-{KEY[mode]}"] = {**pseudo, "student": student, "mode": mode}
    keys["evaluate"] = {**pseudo, "student": student, "modes": modes, "evaluate": section(cfg, "evaluate"),
                        "test_rows": test_rows, **({"test_exclude": test_exclude} if test_exclude else {})}
    return keys


def fingerprint(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def run_unit(marker: Path, key: dict, label: str, fn: Callable[[], Any]) -> dict:
    """Run fn unless marker records the same fingerprint; record result, wall time and load."""
    from components.lib.contracts import data
    from components.lib.settings.cli import to_jsonable

    fp = fingerprint(key)
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fp:
            log.info("%s: done earlier (%.0f s), skipped", label, done["wall_s"])
            return {**done, "skipped": True}
        log.info("%s: settings changed since it was done; redoing", label)
    log.info("%s: starting (load average %.1f)", label, os.getloadavg()[0])
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    result = to_jsonable(fn())
    wall = time.perf_counter() - t0
    record = {"step": label, "fingerprint": fp, "wall_s": round(wall, 2), "result": result,
              "load_avg_start": round(load0, 2), "load_avg_end": round(os.getloadavg()[0], 2),
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    data.write_json(marker, record)
    log.info("%s: finished in %.0f s", label, wall)
    return {**record, "skipped": False}


def _stratified(labels: np.ndarray, candidates: np.ndarray, rows: int, rng: np.random.Generator) -> list[int]:
    keep: list[int] = []
    classes = np.unique(labels)
    for i, c in enumerate(classes):
        idx = candidates[labels[candidates] == c]
        n = rows // len(classes) + (1 if i < rows % len(classes) else 0)
        keep += rng.choice(idx, size=min(n, len(idx)), replace=False).tolist()
    return keep


def subsample_test(src: Path, dst: Path, rows: int, exclude: int = 0) -> Path:
    """A stratified, fixed (seed 0) subsample of the prepared test split as an evaluate data dir,
    beside copies of the unit's train and dev splits (evaluate scores every model on dev, and the
    TF-IDF baseline trains on train and picks its C on dev). The official test split is identical
    for every seed, so every unit gets the same test subsample.
    exclude > 0 first drops the seed-0 subsample of that size (the one `rows=exclude` would give),
    so a table can be measured on reviews its settings were never chosen on."""
    from components.lib.contracts import data

    test = data.read_labeled(src / "test.parquet")
    labels = np.asarray(test.table.column("label").to_numpy())
    everything = np.arange(len(labels))
    if rows >= len(labels) - exclude:
        if exclude:
            raise SystemExit(f"--test-rows {rows} + --test-exclude {exclude} exceed the {len(labels)} test rows")
        return src
    candidates = everything
    if exclude:
        seen = _stratified(labels, everything, exclude, np.random.default_rng(0))
        candidates = np.setdiff1d(everything, seen)
    keep = _stratified(labels, candidates, rows, np.random.default_rng(0))
    sub = test.table.take(sorted(keep))
    card = json.loads((src / "data_card.json").read_text())
    card["test_subsample"] = {"rows": len(sub), "of": len(labels), "seed": 0, "stratified": True, "excluded": exclude}
    with data.atomic_dir(dst) as tmp:
        data.write_table(sub, tmp / "test.parquet")
        data.write_json(tmp / "data_card.json", card)
        for split in ("train", "dev"):
            shutil.copyfile(src / f"{split}.parquet", tmp / f"{split}.parquet")
    return dst


def parent_run(cfg, unit_dir: Path, budget: int, seed: int) -> str | None:
    """One MLflow parent run per (budget, seed), its id kept in the unit dir so a rerun reuses it."""
    if not cfg.tracking.enabled:
        return None
    from components.lib.tracking import runs as tracking

    path = unit_dir / "mlflow_parent_run.json"
    if path.exists():
        return json.loads(path.read_text())["run_id"]
    run_id = tracking.start_parent_run(cfg, run_name=f"paper-table b{budget} s{seed}",
                                       tags={"distilflow.benchmark": "paper_table", "budget": str(budget), "seed": str(seed)})
    unit_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id}) + "\n")
    return run_id


def run_budget_seed(base, args, budget: int, seed: int, work: Path, modes: list[str]) -> dict:
    """Every step of one (budget, seed), each as a resumable unit; returns the unit records."""
    from components import distill_student, evaluate, finetune_teacher, prepare_data, pseudo_label
    from components.lib.settings.config import StudentMode

    unit_dir = work / f"b{budget}" / f"s{seed}"
    cfg, overrides = unit_config(base, args, budget, seed, unit_dir)
    keys = step_keys(cfg, args.test_rows, modes, args.test_exclude or 0)
    if (parent := parent_run(cfg, unit_dir, budget, seed)) is not None:
        cfg = cfg.with_overrides({"tracking.parent_run_id": parent})
    done = unit_dir / "done"
    tag = f"[b{budget} s{seed}]"
    records: dict[str, dict] = {}

    def step(name: str, fn: Callable[[], Any]) -> dict:
        records[name] = run_unit(done / f"{name}.json", keys[name], f"{tag} {name}", fn)
        return records[name]

    step("prepare-data", lambda: prepare_data.run(cfg))
    step("finetune-teacher", lambda: finetune_teacher.run(cfg))
    step("pseudo-label", lambda: pseudo_label.run(cfg))
    for mode in modes:
        mcfg = cfg.with_overrides({"student.mode": mode})
        step(f"distill-{KEY[mode]}", lambda mcfg=mcfg: distill_student.run(mcfg))

    def evaluate_all():
        ecfg = cfg
        if args.test_rows:
            eval_data = subsample_test(cfg.data_dir, unit_dir / "eval_data", args.test_rows, args.test_exclude or 0)
            ecfg = cfg.with_overrides({"data.output_dir": str(eval_data)})
        dirs = {m: cfg.student_dir(StudentMode(m)) for m in modes}
        result = evaluate.run(ecfg, student_dirs=dirs)
        # The whole report travels in the marker: the table is rebuilt from markers alone.
        return {"result": result.model_dump(mode="json"), "report": json.loads(Path(result.report_path).read_text())}

    step("evaluate", evaluate_all)
    if parent is not None:
        from components.lib.tracking import runs as tracking

        tracking.end_parent_run(cfg, parent, ok=True)
    return {"budget": budget, "seed": seed, "unit_dir": str(unit_dir), "overrides": overrides, "steps": records}


# ---------------------------------------------------------------- the table

def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr),
            "values": [float(v) for v in arr]}


def aggregate(units: list[dict], budgets: list[int], modes: list[str]) -> dict:
    """Per budget and model: mean/std test accuracy over seeds; size, speed and pseudo-label rate."""
    per_budget: dict[str, dict] = {}
    speed: dict[str, list[float]] = {"teacher": []} | {KEY[m]: [] for m in modes}
    speed_onnx: dict[str, list[float]] = {KEY[m]: [] for m in modes}
    speedups, speedups_onnx, params_t, params_s, pseudo_rate, test_rows = [], [], [], [], [], set()
    for budget in budgets:
        reports = [u["steps"]["evaluate"]["result"]["report"] for u in units if u["budget"] == budget]
        row = {"teacher": {**mean_std([r["teacher"]["accuracy"] for r in reports]),
                           "ex_per_s": float(np.mean([r["teacher"]["throughput"] for r in reports]))}}
        for m in modes:
            row[KEY[m]] = {**mean_std([r["students"][m]["accuracy"] for r in reports]),
                           "ex_per_s": float(np.mean([r["students"][m]["throughput"] for r in reports]))}
        if reports and all("tfidf" in r for r in reports):  # evaluate.tfidf_baseline (reports before it have none)
            tf = [r["tfidf"] for r in reports]
            row[TFIDF] = {**mean_std([t["accuracy"] for t in tf]), "ex_per_s": float(np.mean([t["throughput"] for t in tf])),
                          "params": int(np.median([t["params"] for t in tf])), "c": [t["c"] for t in tf],
                          "dev_accuracy": mean_std([t["dev"]["accuracy"] for t in tf])}
            speed.setdefault(TFIDF, []).extend(t["throughput"] for t in tf)
        per_budget[str(budget)] = row
        for r in reports:
            speed["teacher"].append(r["teacher"]["throughput"])
            for m in modes:
                speed[KEY[m]].append(r["students"][m]["throughput"])
                speed_onnx[KEY[m]].append(r["students"][m]["throughput_onnx"])
            student = r["students"][DEFAULT_STUDENT] if DEFAULT_STUDENT in r["students"] else r["student"]
            speedups.append(student["throughput"] / r["teacher"]["throughput"])
            speedups_onnx.append(student["throughput_onnx"] / r["teacher"]["throughput"])
            params_t.append(r["teacher"]["params"])
            params_s.append(student["params"])
            test_rows.add(r["test_rows"])
    for u in units:
        rate = u["steps"]["pseudo-label"]["result"]["examples_per_s"]
        if rate:  # 0 when a rerun found every chunk already scored
            pseudo_rate.append(rate)
    ret_budget = 500 if 500 in budgets else max(budgets)
    default = KEY[DEFAULT_STUDENT] if DEFAULT_STUDENT in modes else KEY[modes[-1]]
    retention = {str(b): per_budget[str(b)][default]["mean"] / per_budget[str(b)]["teacher"]["mean"] for b in budgets}
    gain = ({str(b): per_budget[str(b)][default]["mean"] - per_budget[str(b)]["labels_only"]["mean"] for b in budgets}
            if "labels-only" in modes else {})
    gain_tfidf = {str(b): per_budget[str(b)][default]["mean"] - per_budget[str(b)][TFIDF]["mean"] for b in budgets
                  if TFIDF in per_budget[str(b)]}
    return {
        "budgets": per_budget,
        "default_student": default,
        "retention": retention[str(ret_budget)],
        "retention_budget": ret_budget,
        "retention_by_budget": retention,
        "gain_over_labels_only": gain,
        "gain_over_tfidf": gain_tfidf,
        "params_teacher": int(np.median(params_t)),
        "params_student": int(np.median(params_s)),
        "compression": float(np.median(params_t) / np.median(params_s)),
        "speedup": float(np.mean(speedups)),
        "speedup_std": mean_std(speedups)["std"],
        "speedup_onnx": float(np.mean(speedups_onnx)),
        "throughput_ex_per_s": {k: mean_std(v) for k, v in speed.items()},
        "throughput_onnx_ex_per_s": {k: mean_std(v) for k, v in speed_onnx.items()},
        "pseudo_label_ex_per_s": float(np.mean(pseudo_rate)) if pseudo_rate else None,
        "test_rows": sorted(test_rows),
    }


def targets(summary: dict, budgets: list[int]) -> list[dict]:
    """Each target of the claim with its value, threshold, margin and PASS/MISS."""
    out = []

    def add(name: str, value: float | None, threshold: float, note: str) -> None:
        ok = value is not None and value >= threshold
        out.append({"target": name, "value": value, "threshold": threshold,
                    "margin": None if value is None else value - threshold, "pass": ok, "note": note})

    add(f"retention at {summary['retention_budget']}/class", summary["retention"], RETENTION_MIN,
        f"{summary['default_student']} / teacher mean test accuracy")
    small = min(budgets)
    add(f"gain over labels-only at {small}/class", summary["gain_over_labels_only"].get(str(small)), GAIN_MIN,
        f"{summary['default_student']} minus labels-only mean test accuracy (absolute)")
    add("compression", summary["compression"], COMPRESSION_MIN, "teacher / student parameters")
    add("speedup", summary["speedup"], SPEEDUP_MIN, "student / teacher examples/s at batch 256, torch, same process")
    return out


def wall_by_step(units: list[dict]) -> dict[str, float]:
    """Seconds per step summed over units (a skipped unit counts the time it took when it ran)."""
    out: dict[str, float] = {}
    for u in units:
        for name, rec in u["steps"].items():
            out[name] = round(out.get(name, 0.0) + rec["wall_s"], 1)
    out["distill-student (all modes)"] = round(sum(v for k, v in out.items() if k.startswith("distill-")), 1)
    return out


def code_version() -> str | None:
    """The git commit the benchmark ran from (+ '-dirty' with uncommitted changes), if in a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def machine(reports: list[dict]) -> dict:
    import torch

    env = reports[0]["environment"] if reports else {}
    return {**env, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "timings are from evaluate on this machine; other processes may have shared the CPU "
                    "(see each unit's load_avg_start/_end)"}

