"""evaluate for sequence classification: the EvalHooks (components/evaluate/hooks.py) that score
texts. Quality is accuracy, macro-F1, per class, confusion, agreement with the teacher and ECE on
the test split, accuracy and macro-F1 on the dev split (report.json's `dev` block: export decides
int8 keep/drop and the champion gate on those, never on test). Speed is examples/s; the plots are
the student's and the teacher's confusion matrices and accuracy vs speed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.evaluate.hooks import Examples, LogLines
from components.lib.contracts import data
from components.lib.core.errors import DataError
from components.lib.evaluation import report, report_md
from components.lib.settings.config import PipelineConfig

log = logging.getLogger(__name__)

LOGGED_TASK = None  # classification runs have never logged a task param or tag
METRIC = "accuracy"
LINES = LogLines(
    progress="teacher: scoring test", unit="ex", scored="teacher scored %d test texts in %.1fs",
    teacher="teacher: accuracy %.4f, %.1f examples/s, p50 %.1f ms",
    student="student %s: accuracy %.4f, agreement %.4f, %.1f examples/s torch, %.1f ONNX",
    done="retention %.4f, compression %.1fx, speed-up %.1fx (ONNX %.1fx); report %s",
)
read_split = data.read_labeled
agreement = report.agreement  # logits vs the teacher's logits: same argmax


class EvalResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    report_path: str
    teacher_accuracy: float
    student_mode: str
    student_accuracy: float
    baseline_accuracy: float | None
    tfidf_accuracy: float | None = None
    retention: float
    compression: float
    speedup: float
    speedup_onnx: float
    students: list[str]


def split_examples(split: data.Labeled) -> Examples:
    return Examples(split.table.column("text").to_pylist(), np.asarray(split.table.column("label").to_pylist()), None)


def examples(splits: dict[str, data.Labeled], data_dir: Path) -> tuple[Examples, Examples]:
    return split_examples(splits["test"]), split_examples(splits["dev"])


def load_teacher(path, max_length: int, batch_size: int, keep_tail: int = 0):
    from components.lib.models import teacher

    model, tokenizer = teacher.load_teacher(path)

    def forward(texts: list[str], progress=None) -> np.ndarray:  # (N, C)
        return teacher.score(model, tokenizer, texts, max_length, batch_size, progress=progress, keep_tail=keep_tail)[0]

    return model, forward


def load_student(path: Path, batch_size: int):
    from components.lib.models import student_io
    from components.lib.publish.onnx import onnx_predict_logits

    st = student_io.load_student(path)
    return (st, lambda texts: student_io.predict_logits(st, texts, batch_size),
            lambda session, texts: onnx_predict_logits(session, st, texts, batch_size))


def scores(logits: np.ndarray, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> tuple[dict, np.ndarray]:
    return report.classification_metrics(logits, ex.gold, label_names, cfg.evaluate.ece_bins), logits


def dev_scores(logits: np.ndarray, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> dict:
    """accuracy and macro-F1 on the dev split (what export decides on)."""
    m = report.classification_metrics(logits, ex.gold, label_names, 1)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def classic_baseline(cfg: PipelineConfig, test: Examples, dev: Examples, label_names: list[str],
                     teacher_pred: np.ndarray) -> dict | None:
    """TF-IDF + logistic regression fitted on train.parquet, C chosen on dev (lib/training/classic.py):
    test and dev scores, the selection record, size and speed (timed like the students: raw text in)."""
    if not cfg.evaluate.tfidf_baseline:
        return None
    from components.lib.evaluation.protocol import timings
    from components.lib.training.classic import MAX_ITER, fit_tfidf_baseline

    path = cfg.data_dir / "train.parquet"
    if not path.exists():
        raise DataError(f"{path}: file not found (the TF-IDF baseline trains on the labeled train split; "
                        "--set evaluate.tfidf_baseline=false skips it)")
    labeled = data.read_labeled(path)
    if labeled.label_names != label_names:
        raise DataError(f"{path}: label names {labeled.label_names} differ from test's {label_names}")
    train = split_examples(labeled)
    try:
        fit = fit_tfidf_baseline(train.inputs, train.gold, dev.inputs, dev.gold, len(label_names))
    except ValueError as err:
        raise DataError(f"{path}: {err} (--set evaluate.tfidf_baseline=false skips the TF-IDF baseline)") from None
    logits = fit.logits(test.inputs)
    out, _ = scores(logits, test, label_names, cfg)
    speed, lat = timings(fit.logits, test.inputs, cfg)
    out["dev"] = dev_scores(fit.logits(dev.inputs), dev, label_names, cfg)
    out.update(
        model="tfidf+logreg", features="word 1-2 grams, sublinear tf, L2 rows", min_df=fit.min_df,
        solver="lbfgs", max_iter=MAX_ITER, train_rows=len(train.inputs), c=fit.c, c_grid=list(fit.grid),
        dev_accuracy_per_c={f"{c:g}": a for c, a in fit.dev_accuracy_per_c.items()}, vocabulary_size=fit.vocabulary_size,
        params=fit.params, fit_seconds=fit.fit_seconds, agreement=agreement(logits, teacher_pred),
        throughput=speed, latency_ms=lat,
    )
    log.info("tfidf: C %g chosen on dev (dev accuracy %.4f), accuracy %.4f, %d terms, fit %.2fs, %.0f examples/s",
             fit.c, out["dev"]["accuracy"], out["accuracy"], fit.vocabulary_size, fit.fit_seconds, speed)
    return out


def student_fields(student, ex: Examples) -> dict:
    return {}


def complete_report(rep: dict, test: Examples) -> dict:
    return rep


def logged_scores(rep: dict) -> dict:
    out = {"student": {"accuracy": rep["student"]["accuracy"], "macro_f1": rep["student"]["macro_f1"]}}
    for who in ("baseline", "tfidf"):
        if who in rep:
            out[who] = {"accuracy": rep[who]["accuracy"], "macro_f1": rep[who]["macro_f1"]}
    return out


def write_views(rep: dict, out: Path) -> None:
    student = rep["student"]
    report.plot_confusion(student["confusion_matrix"], rep["label_names"],
                          f"student {student['mode']}: accuracy {student['accuracy']:.3f}", out / "confusion_student.png")
    report.plot_confusion(rep["teacher"]["confusion_matrix"], rep["label_names"],
                          f"teacher: accuracy {rep['teacher']['accuracy']:.3f}", out / "confusion_teacher.png")
    points = [("teacher (torch)", rep["teacher"]["throughput"], rep["teacher"]["accuracy"])]
    for mode, m in rep["students"].items():
        points += [(f"{mode} (torch)", m["throughput"], m["accuracy"]), (f"{mode} (ONNX)", m["throughput_onnx"], m["accuracy"])]
    if "tfidf" in rep:
        points.append(("TF-IDF + LR (scikit-learn)", rep["tfidf"]["throughput"], rep["tfidf"]["accuracy"]))
    report.plot_accuracy_speed(points, f"accuracy vs speed, batch {rep['batch_size']}", out / "accuracy_vs_speed.png")
    (out / "report.md").write_text(report_md.render_markdown(rep))


def result(rep: dict, report_path: Path) -> EvalResult:
    return EvalResult(
        report_path=str(report_path), teacher_accuracy=rep["teacher"]["accuracy"],
        student_mode=rep["student"]["mode"], student_accuracy=rep["student"]["accuracy"],
        baseline_accuracy=rep["baseline"]["accuracy"] if "baseline" in rep else None,
        tfidf_accuracy=rep["tfidf"]["accuracy"] if "tfidf" in rep else None, retention=rep["retention"],
        compression=rep["compression"], speedup=rep["speedup"], speedup_onnx=rep["speedup_onnx"], students=list(rep["students"]),
    )
