"""evaluate: metrics against hand values, the report's keys and files, MLflow logging, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.lib.core.errors import UserError
from components.lib.evaluation import report
from components.runner.summary import summary_table
from tests.helpers import LABELS, make_work_dir, tiny_cfg


def test_ece_matches_a_hand_computed_value():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])  # correct, wrong, correct, correct
    # 15 bins: each confidence (0.9, 0.85, 0.65, 0.55) sits in its own bin.
    assert report.expected_calibration_error(probs, labels, 15) == pytest.approx((0.1 + 0.85 + 0.35 + 0.45) / 4)
    # 5 bins: 0.9 and 0.85 share (0.8, 1] -> acc 0.5 vs conf 0.875; 0.65 in (0.6, 0.8]; 0.55 in (0.4, 0.6].
    assert report.expected_calibration_error(probs, labels, 5) == pytest.approx(2 / 4 * 0.375 + 1 / 4 * 0.35 + 1 / 4 * 0.45)
    assert report.expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 15) == 0.0


def test_classification_metrics_and_agreement():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    labels = np.array([0, 1, 2, 2])
    m = report.classification_metrics(logits, labels, LABELS, 15)
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["per_class"]["tech"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["per_class"]["money"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert report.agreement(logits, logits[[0, 1, 3, 3]]) == 0.75
    np.testing.assert_allclose(report.softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_flat_metrics_are_mlflow_safe():
    flat = report.flat_metrics({"students": {"soft+repr": {"accuracy": 0.9, "mode": "soft+repr", "cm": [[1]]}},
                                "ok": True, "nan": float("nan"), "n": 3})
    assert flat == {"students.soft_repr.accuracy": 0.9, "n": 3.0}


def test_evaluate_writes_the_report_and_logs_it(tmp_path, packaged_teacher_dir):
    import mlflow

    from components import evaluate

    torch.set_num_threads(1)
    root = make_work_dir(tmp_path / "w", packaged_teacher_dir, {"soft+repr": 40, "labels-only": 3})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = evaluate.run(tiny_cfg(root, uri))
    rep = json.loads((root / "eval" / "report.json").read_text())
    for key in ("retention", "compression", "speedup", "speedup_onnx"):
        assert rep[key] > 0
    for key in ("accuracy", "macro_f1", "ece", "per_class", "confusion_matrix", "params", "size_bytes", "throughput", "latency_ms"):
        assert key in rep["teacher"] and key in rep["student"] and key in rep["baseline"]
    assert rep["student"]["mode"] == "soft+repr" and rep["baseline"]["mode"] == "labels-only"
    assert set(rep["students"]) == {"soft+repr", "labels-only"} and res.students == ["soft+repr", "labels-only"]
    assert rep["student"]["accuracy"] > rep["baseline"]["accuracy"]  # 40 training steps vs 3
    assert rep["retention"] == pytest.approx(rep["student"]["accuracy"] / rep["teacher"]["accuracy"])
    assert rep["compression"] == pytest.approx(rep["params"]["teacher"] / rep["params"]["student"])
    assert rep["speedup"] == pytest.approx(rep["throughput"]["student"] / rep["throughput"]["teacher"])
    assert rep["params"]["teacher"] > rep["params"]["student"] > 0
    assert 0 <= rep["student"]["agreement"] <= 1 and rep["student"]["throughput_onnx"] > 0
    assert rep["student"]["latency_ms"]["p95"] >= rep["student"]["latency_ms"]["p50"] > 0
    assert rep["test_rows"] == 60 and sum(map(sum, rep["student"]["confusion_matrix"])) == 60
    assert rep["environment"]["versions"]["torch"] and rep["environment"]["torch_threads"] == 1
    for name in ("report.md", "confusion_student.png", "accuracy_vs_speed.png"):
        assert (root / "eval" / name).stat().st_size > 500
    md = (root / "eval" / "report.md").read_text()
    assert "Retention" in md and "student `labels-only`" in md and "| sport |" in md
    assert (root / "eval" / "accuracy_vs_speed.png").read_bytes()[:4] == b"\x89PNG"

    # TF-IDF + logistic regression on the same labeled rows (train.parquet), C chosen on dev
    tfidf = rep["tfidf"]
    for key in ("accuracy", "macro_f1", "ece", "per_class", "confusion_matrix", "agreement", "params", "throughput",
                "latency_ms", "vocabulary_size", "fit_seconds"):
        assert key in tfidf
    assert tfidf["train_rows"] == 24 and tfidf["c_grid"] == [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    per_c = tfidf["dev_accuracy_per_c"]
    assert list(per_c) == ["0.01", "0.1", "1", "10", "100", "1000"]
    assert per_c[f"{tfidf['c']:g}"] == tfidf["dev"]["accuracy"] == max(per_c.values())
    assert tfidf["c"] == min(float(c) for c, a in per_c.items() if a == max(per_c.values()))  # ties: the smaller C
    assert tfidf["accuracy"] > 0.8 and tfidf["throughput"] > 0 and tfidf["vocabulary_size"] > 30  # topic words
    assert sum(map(sum, tfidf["confusion_matrix"])) == 60
    assert rep["dev"]["tfidf"] == tfidf["dev"]["accuracy"]
    assert rep["dev"]["tfidf_beats_student"] == (tfidf["dev"]["accuracy"] > rep["dev"]["student"])
    assert res.tfidf_accuracy == tfidf["accuracy"]
    assert "| TF-IDF + logistic regression (scikit-learn) |" in md and f"C = {tfidf['c']:g} chosen on dev" in md
    assert "baseline (TF-IDF + LR)" in summary_table(rep)

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.tags["distilflow.step"] == "evaluate"
    assert run.data.metrics["retention"] == pytest.approx(rep["retention"])
    assert run.data.metrics["students.soft_repr.accuracy"] == pytest.approx(rep["student"]["accuracy"])
    assert "baseline.accuracy" in run.data.metrics
    assert run.data.metrics["tfidf.accuracy"] == pytest.approx(rep["tfidf"]["accuracy"])
    assert run.data.metrics["dev.tfidf"] == pytest.approx(rep["dev"]["tfidf"])
    assert {f.path for f in client.list_artifacts(run.info.run_id, "eval")} >= {"eval/report.json", "eval/report.md"}


def test_explicit_student_dirs_and_missing_inputs(tmp_path, packaged_teacher_dir):
    from components import evaluate

    torch.set_num_threads(1)
    root = make_work_dir(tmp_path / "w", packaged_teacher_dir, {"labels-only": 5})
    moved = root / "elsewhere"
    (root / "student" / "labels-only".replace("+", "_")).rename(moved)
    cfg = tiny_cfg(root, None, evaluate={"latency_runs": 2, "throughput_rows": 8})
    with pytest.raises(UserError, match="no trained student found"):
        evaluate.run(cfg)
    res = evaluate.run(cfg, student_dirs={"labels-only": moved})
    assert res.student_mode == "labels-only" and res.baseline_accuracy is None
    (root / "data" / "train.parquet").unlink()  # what the TF-IDF baseline trains on
    with pytest.raises(UserError, match="train.parquet: file not found .*evaluate.tfidf_baseline=false"):
        evaluate.run(cfg, student_dirs={"labels-only": moved})
    res = evaluate.run(cfg.with_overrides({"evaluate.tfidf_baseline": False}), student_dirs={"labels-only": moved})
    assert res.tfidf_accuracy is None and "tfidf" not in json.loads((root / "eval" / "report.json").read_text())
    with pytest.raises(UserError, match="config.json"):
        evaluate.run(cfg, student_dirs={"soft": tmp_path})
    (root / "data" / "test.parquet").unlink()
    with pytest.raises(UserError, match="test.parquet: file not found"):
        evaluate.run(cfg, student_dirs={"labels-only": moved})


def test_speed_is_timed_interleaved_in_rounds_with_the_median_kept(tmp_path):
    """interleaved_timings times every model once a round, in an order rotated each round, and keeps
    each model's median with its rounds; ratios are taken per round (same machine state)."""
    import time as _time

    from components.lib.evaluation.protocol import interleaved_timings, ratio_rounds, round_order

    calls: list[str] = []

    def model(name: str, cost: float):
        def predict(batch):
            calls.append(name)
            _time.sleep(cost * len(batch))
        return predict

    cfg = tiny_cfg(tmp_path, None, evaluate={"timing_rounds": 3, "throughput_rows": 8, "batch_size": 4, "latency_runs": 2})
    out = interleaved_timings({"a": model("a", 0.001), "b": model("b", 0.004)}, ["x"] * 8, cfg)
    for v in out.values():
        assert len(v["throughput_rounds"]) == 3 and v["throughput"] == sorted(v["throughput_rounds"])[1]
        assert set(v["latency_ms"]) == {"p50", "p95", "mean"} and len(v["latency_p50_rounds"]) == 3
    assert out["a"]["throughput"] > 2 * out["b"]["throughput"]
    assert calls.count("a") == calls.count("b") > 0  # both timed the same number of times
    assert [round_order(["t", "s", "o"], r) for r in range(4)] == [["t", "s", "o"], ["s", "o", "t"], ["o", "t", "s"], ["t", "s", "o"]]
    r = ratio_rounds([10.0, 30.0, 20.0], [1.0, 2.0, 4.0])
    assert r["rounds"] == [10.0, 15.0, 5.0] and r["median"] == 10.0 and (r["min"], r["max"]) == (5.0, 15.0)
