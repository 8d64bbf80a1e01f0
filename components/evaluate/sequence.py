"""evaluate for sequence classification: the one step that reads the test split. Teacher vs
student(s) vs baseline. Every model is also scored on the dev split (report.json's `dev` block):
export decides int8 keep/drop and the champion gate on those, never on test.

Quality (accuracy, macro-F1, per class, confusion, agreement with the teacher, ECE), size
(parameters, weights on disk, compression) and speed (examples/s at batch 256, p50/p95 latency
at batch 1) are measured in this process on this machine: torch for the teacher, torch and ONNX
Runtime for every student. Writes cfg.eval_dir atomically: report.json, report.md, PNG plots.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from components.lib.contracts import data
from components.lib.core.errors import UserError
from components.lib.evaluation import report, report_md
from components.lib.evaluation.protocol import build_report, find_students, timings
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger(__name__)


class EvalResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    report_path: str
    teacher_accuracy: float
    student_mode: str
    student_accuracy: float
    baseline_accuracy: float | None
    retention: float
    compression: float
    speedup: float
    speedup_onnx: float
    students: list[str]


def dev_scores(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    """accuracy and macro-F1 on the dev split (what export decides on)."""
    m = report.classification_metrics(logits, labels, label_names, 1)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def evaluate_teacher(cfg: PipelineConfig, texts: list[str], labels: np.ndarray, label_names: list[str],
                     dev: tuple[list[str], np.ndarray]) -> tuple[dict, np.ndarray]:
    from components.lib.core.torch_utils import count_parameters
    from components.lib.models.teacher import label_names_of, load_teacher, score

    path = tracking.resolve_teacher(cfg)
    model, tokenizer = load_teacher(path)
    if label_names_of(model) != label_names:
        raise UserError(f"{path}/config.json: id2label {label_names_of(model)} differs from the test split's {label_names}")
    max_len, bs = cfg.teacher.max_length, cfg.evaluate.batch_size
    t0 = time.perf_counter()
    with tqdm(total=len(texts), desc="teacher: scoring test", unit="ex", disable=None) as bar:
        logits, _ = score(model, tokenizer, texts, max_len, bs, progress=bar.update)
    log.info("teacher scored %d test texts in %.1fs", len(texts), time.perf_counter() - t0)
    speed, lat = timings(lambda b: score(model, tokenizer, b, max_len, bs), texts, cfg)
    out = report.classification_metrics(logits, labels, label_names, cfg.evaluate.ece_bins)
    out["dev"] = dev_scores(score(model, tokenizer, dev[0], max_len, bs)[0], dev[1], label_names)
    out.update(model=cfg.transfer.teacher or str(cfg.teacher_dir), path=str(path), max_length=max_len, params=count_parameters(model),
               size_bytes=report.dir_size_bytes(Path(path)) if isinstance(path, Path) else None,
               throughput=speed, latency_ms=lat)
    log.info("teacher: accuracy %.4f, %.1f examples/s, p50 %.1f ms", out["accuracy"], speed, lat["p50"])
    return out, logits


def evaluate_student(cfg: PipelineConfig, path: Path, texts: list[str], labels: np.ndarray, label_names: list[str],
                     teacher_logits: np.ndarray, scratch: Path, dev: tuple[list[str], np.ndarray]) -> dict:
    from components.lib.core.torch_utils import count_parameters
    from components.lib.models.student_io import load_student, predict_logits
    from components.lib.publish.onnx import export_onnx, onnx_predict_logits, ort_session

    st = load_student(path)
    if st.label_names != label_names:
        raise UserError(f"{path}/config.json: label_names {st.label_names} differ from the test split's {label_names}")
    bs = cfg.evaluate.batch_size
    logits = predict_logits(st, texts, bs)
    speed, lat = timings(lambda b: predict_logits(st, b, bs), texts, cfg)
    onnx_path = export_onnx(st, scratch / f"{st.mode.replace('+', '_')}.onnx", cfg.export.opset)
    session = ort_session(onnx_path, cfg.evaluate.num_threads)
    speed_onnx, lat_onnx = timings(lambda b: onnx_predict_logits(session, st, b, bs), texts, cfg)
    out = report.classification_metrics(logits, labels, label_names, cfg.evaluate.ece_bins)
    out["dev"] = dev_scores(predict_logits(st, dev[0], bs), dev[1], label_names)
    out.update(mode=st.mode, path=str(path), max_length=st.max_length, agreement=report.agreement(logits, teacher_logits),
               params=count_parameters(st.model), size_bytes=report.dir_size_bytes(path),
               onnx_size_bytes=onnx_path.stat().st_size, throughput=speed, latency_ms=lat,
               throughput_onnx=speed_onnx, latency_ms_onnx=lat_onnx)
    log.info("student %s: accuracy %.4f, agreement %.4f, %.1f examples/s torch, %.1f ONNX", st.mode,
             out["accuracy"], out["agreement"], speed, speed_onnx)
    return out


def write_outputs(rep: dict, out: Path) -> None:
    """report.json, report.md and the plots into `out` (the caller's temp dir)."""
    data.write_json(out / "report.json", rep)
    student = rep["student"]
    report.plot_confusion(student["confusion_matrix"], rep["label_names"],
                          f"student {student['mode']}: accuracy {student['accuracy']:.3f}", out / "confusion_student.png")
    report.plot_confusion(rep["teacher"]["confusion_matrix"], rep["label_names"],
                          f"teacher: accuracy {rep['teacher']['accuracy']:.3f}", out / "confusion_teacher.png")
    points = [("teacher (torch)", rep["teacher"]["throughput"], rep["teacher"]["accuracy"])]
    for mode, m in rep["students"].items():
        points += [(f"{mode} (torch)", m["throughput"], m["accuracy"]), (f"{mode} (ONNX)", m["throughput_onnx"], m["accuracy"])]
    report.plot_accuracy_speed(points, f"accuracy vs speed, batch {rep['batch_size']}", out / "accuracy_vs_speed.png")
    (out / "report.md").write_text(report_md.render_markdown(rep))


def run(cfg: PipelineConfig, student_dirs: dict[str, Path] | None = None) -> EvalResult:
    import torch

    if cfg.evaluate.num_threads:
        torch.set_num_threads(cfg.evaluate.num_threads)
    dirs = find_students(cfg, student_dirs)
    test = data.read_labeled(cfg.data_dir / "test.parquet")
    texts = test.table.column("text").to_pylist()
    labels = np.asarray(test.table.column("label").to_pylist())
    dev_split = data.read_labeled(cfg.data_dir / "dev.parquet")
    if dev_split.label_names != test.label_names:
        raise UserError(f"{cfg.data_dir / 'dev.parquet'}: label_names {dev_split.label_names} differ from test's {test.label_names}")
    dev = (dev_split.table.column("text").to_pylist(), np.asarray(dev_split.table.column("label").to_pylist()))
    card_path = cfg.data_dir / "data_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None

    with tracking.step_run(cfg, "evaluate") as tr:
        tr.log_params({"evaluate": cfg.evaluate.model_dump(mode="json"), "students": {m.replace("+", "_"): str(p) for m, p in dirs.items()},
                       "test_rows": len(texts)})
        teacher, teacher_logits = evaluate_teacher(cfg, texts, labels, test.label_names, dev)
        with tempfile.TemporaryDirectory() as scratch:
            students = {m: evaluate_student(cfg, p, texts, labels, test.label_names, teacher_logits, Path(scratch), dev)
                        for m, p in dirs.items()}
        rep = build_report(cfg, teacher, students, test.label_names, len(texts), card, dev_rows=len(dev[1]))
        with data.atomic_dir(cfg.eval_dir) as out:
            write_outputs(rep, out)
        logged = {k: rep[k] for k in ("teacher", "students", "retention", "dev", "params", "compression", "throughput",
                                      "speedup", "speedup_onnx", "latency_ms")}
        logged["student"] = {"accuracy": rep["student"]["accuracy"], "macro_f1": rep["student"]["macro_f1"]}
        if "baseline" in rep:
            logged["baseline"] = {"accuracy": rep["baseline"]["accuracy"], "macro_f1": rep["baseline"]["macro_f1"]}
        tr.log_metrics(report.flat_metrics(logged))
        tr.set_tags({"distilflow.student_mode": rep["student"]["mode"], "distilflow.cpu": rep["environment"]["cpu"]})
        tr.log_artifacts(cfg.eval_dir, "eval")

    log.info("retention %.4f, compression %.1fx, speed-up %.1fx (ONNX %.1fx); report %s", rep["retention"],
             rep["compression"], rep["speedup"], rep["speedup_onnx"], cfg.eval_dir / "report.json")
    return EvalResult(
        report_path=str(cfg.eval_dir / "report.json"), teacher_accuracy=teacher["accuracy"],
        student_mode=rep["student"]["mode"], student_accuracy=rep["student"]["accuracy"],
        baseline_accuracy=rep["baseline"]["accuracy"] if "baseline" in rep else None, retention=rep["retention"],
        compression=rep["compression"], speedup=rep["speedup"], speedup_onnx=rep["speedup_onnx"], students=list(students),
    )

