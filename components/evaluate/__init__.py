"""evaluate: the one step that reads the test split. Teacher vs student(s) vs baselines (the
labels-only student; for sequence classification also TF-IDF + logistic regression fitted on
train.parquet, its C chosen on dev): quality, size and speed. Every model is also scored on the dev split (report.json's `dev` block): export
decides int8 keep/drop and the champion gate on those, never on test.

Size (parameters, weights on disk, compression) and speed (items/s at evaluate.batch_size, p50/p95
latency at batch 1) are measured in this process on this machine: torch for the teacher, torch and
ONNX Runtime for every student. Writes cfg.eval_dir atomically: report.json, report.md, PNG plots.

run() below is the step for every task; what differs (how a model is scored, the metrics, the
markdown and the plots, the result) are the EvalHooks of hooks.py, one module per task in TASKS
(sequence.py: accuracy, macro-F1, ECE; tokens.py: entity P/R/F1 per type and language). Student
discovery, timings and the report body are lib/evaluation/protocol.py's.

    python -m components.evaluate --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from components.evaluate import sequence, tokens
from components.evaluate.hooks import EvalHooks, Examples
from components.evaluate.sequence import EvalResult
from components.evaluate.tokens import TokenEvalResult
from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report
from components.lib.evaluation.protocol import build_report, find_students, interleaved_timings
from components.lib.settings.cli import step_main
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

__all__ = ["run", "main", "EvalResult", "TokenEvalResult", "TASKS"]

TASKS: dict[Task, EvalHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}
# report.json keys logged as MLflow metrics for every task; each task adds its scores (logged_scores)
LOGGED_KEYS = ("teacher", "students", "retention", "dev", "params", "compression", "throughput", "speedup",
               "speedup_onnx", "latency_ms")


def evaluate_teacher(cfg: PipelineConfig, task: EvalHooks, test: Examples, dev: Examples,
                     label_names: list[str]) -> tuple[dict, Any, Any]:
    """The teacher's entry of report.json (its speed filled in later, interleaved with the
    students'), its test predictions (what agreement compares with) and its forward."""
    from components.lib.core.torch_utils import count_parameters
    from components.lib.models.teacher import label_names_of

    path = tracking.resolve_teacher(cfg)
    model, forward = task.load_teacher(path, cfg.teacher.max_length, cfg.evaluate.batch_size, cfg.teacher.keep_tail)
    if label_names_of(model) != label_names:
        raise UserError(f"{path}/config.json: id2label {label_names_of(model)} differs from the test split's {label_names}")
    t0 = time.perf_counter()
    with tqdm(total=len(test.inputs), desc=task.LINES.progress, unit=task.LINES.unit, disable=None) as bar:
        logits = forward(test.inputs, progress=bar.update)
    task.log.info(task.LINES.scored, len(test.inputs), time.perf_counter() - t0)
    out, pred = task.scores(logits, test, label_names, cfg)
    out["dev"] = task.dev_scores(forward(dev.inputs), dev, label_names, cfg)
    out.update(model=cfg.transfer.teacher or str(cfg.teacher_dir), path=str(path), max_length=cfg.teacher.max_length,
               params=count_parameters(model), size_bytes=report.dir_size_bytes(Path(path)) if isinstance(path, Path) else None)
    return out, pred, forward


def evaluate_student(cfg: PipelineConfig, task: EvalHooks, path: Path, test: Examples, dev: Examples,
                     label_names: list[str], teacher_pred: Any, scratch: Path) -> tuple[dict, dict[str, Any]]:
    """One student's entry of report.json (speed filled in later) and its forwards to time: torch
    and ONNX Runtime (exported into `scratch`)."""
    from components.lib.core.torch_utils import count_parameters
    from components.lib.publish.onnx import export_onnx, ort_session

    st, forward, onnx_forward = task.load_student(path, cfg.evaluate.batch_size)
    if st.label_names != label_names:
        raise UserError(f"{path}/config.json: label_names {st.label_names} differ from the test split's {label_names}")
    out, pred = task.scores(forward(test.inputs), test, label_names, cfg)
    onnx_path = export_onnx(st, scratch / f"{st.mode.replace('+', '_')}.onnx", cfg.export.opset)
    session = ort_session(onnx_path, cfg.evaluate.num_threads)
    out["dev"] = task.dev_scores(forward(dev.inputs), dev, label_names, cfg)
    out.update(mode=st.mode, path=str(path), max_length=st.max_length, agreement=task.agreement(pred, teacher_pred),
               params=count_parameters(st.model), size_bytes=report.dir_size_bytes(path),
               onnx_size_bytes=onnx_path.stat().st_size)
    out.update(task.student_fields(st, test))
    return out, {"torch": forward, "onnx": lambda batch: onnx_forward(session, batch)}


def add_timings(cfg: PipelineConfig, task: EvalHooks, teacher: dict, teacher_forward: Any, students: dict[str, dict],
                forwards: dict[str, dict[str, Any]], test: Examples) -> None:
    """Every model's speed, timed interleaved (protocol.interleaved_timings), into its report entry."""
    models = {"teacher": teacher_forward}
    for mode, fw in forwards.items():
        models[f"{mode}/torch"], models[f"{mode}/onnx"] = fw["torch"], fw["onnx"]
    timed = interleaved_timings(models, test.inputs, cfg)
    teacher.update(timed["teacher"])
    task.log.info(task.LINES.teacher, teacher[task.METRIC], teacher["throughput"], teacher["latency_ms"]["p50"])
    for mode, out in students.items():
        t, o = timed[f"{mode}/torch"], timed[f"{mode}/onnx"]
        out.update(t, throughput_onnx=o["throughput"], throughput_onnx_rounds=o["throughput_rounds"],
                   latency_ms_onnx=o["latency_ms"], latency_p50_onnx_rounds=o["latency_p50_rounds"])
        task.log.info(task.LINES.student, mode, out[task.METRIC], out["agreement"], out["throughput"], out["throughput_onnx"])


def log_run(tr, task: EvalHooks, rep: dict, eval_dir: Path) -> None:
    """The report's metrics, tags and files on the step's MLflow run."""
    logged = {k: rep[k] for k in LOGGED_KEYS}
    logged.update(task.logged_scores(rep))
    tr.log_metrics(report.flat_metrics(logged))
    task_tag = {} if task.LOGGED_TASK is None else {"distilflow.task": task.LOGGED_TASK}
    tr.set_tags({"distilflow.student_mode": rep["student"]["mode"], "distilflow.cpu": rep["environment"]["cpu"], **task_tag})
    tr.log_artifacts(eval_dir, "eval")


def run(cfg: PipelineConfig, student_dirs: dict[str, Path] | None = None) -> EvalResult | TokenEvalResult:
    import torch

    task = TASKS[cfg.task]
    if cfg.evaluate.num_threads:
        torch.set_num_threads(cfg.evaluate.num_threads)
    dirs = find_students(cfg, student_dirs)
    splits = data.read_splits(cfg.data_dir, ("test", "dev"), task.read_split)
    test, dev = task.examples(splits, cfg.data_dir)
    label_names = splits["test"].label_names
    card_path = cfg.data_dir / "data_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None

    with tracking.step_run(cfg, "evaluate") as tr:
        task_param = {} if task.LOGGED_TASK is None else {"task": task.LOGGED_TASK}
        tr.log_params({"evaluate": cfg.evaluate.model_dump(mode="json"), **task_param,
                       "students": {m.replace("+", "_"): str(p) for m, p in dirs.items()}, "test_rows": len(test.inputs)})
        teacher, teacher_pred, teacher_forward = evaluate_teacher(cfg, task, test, dev, label_names)
        tfidf = task.classic_baseline(cfg, test, dev, label_names, teacher_pred)
        with tempfile.TemporaryDirectory() as scratch:
            scored = {m: evaluate_student(cfg, task, p, test, dev, label_names, teacher_pred, Path(scratch))
                      for m, p in dirs.items()}
            students = {m: out for m, (out, _) in scored.items()}
            add_timings(cfg, task, teacher, teacher_forward, students, {m: fw for m, (_, fw) in scored.items()}, test)
            del teacher_forward, scored
        rep = task.complete_report(build_report(cfg, teacher, students, label_names, len(test.inputs), card,
                                                metric=task.METRIC, dev_rows=len(dev.inputs), tfidf=tfidf), test)
        with data.atomic_dir(cfg.eval_dir) as out:
            data.write_json(out / "report.json", rep)
            task.write_views(rep, out)
        log_run(tr, task, rep, cfg.eval_dir)

    task.log.info(task.LINES.done, rep["retention"], rep["compression"], rep["speedup"], rep["speedup_onnx"],
                  cfg.eval_dir / "report.json")
    return task.result(rep, cfg.eval_dir / "report.json")


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Evaluate teacher, student and baseline on the test split: quality, size, speed", argv)
