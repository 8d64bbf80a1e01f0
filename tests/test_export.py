"""export: ONNX parity (and its failure), int8, the pyfunc over raw text, a run on a local sqlite store.

The tiny models come from tests/helpers.py; the tiny_student_dir and evaluated_work_dir fixtures are in conftest.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import LABELS, make_topic_texts, make_work_dir, tiny_cfg

# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("student_fixture", ["tiny_student_dir", "tiny_factorised_student_dir"])  # full, factorised embeddings
def test_onnx_parity_dynamic_axes_and_int8(student_fixture, request, tmp_path):
    tiny_student_dir = request.getfixturevalue(student_fixture)
    from components.lib.models.student_io import encode, load_student, predict_logits
    from components.lib.publish.onnx import (
        check_parity,
        export_onnx,
        onnx_predict_logits,
        ort_session,
        quantize_int8,
    )

    st = load_student(tiny_student_dir)
    texts, labels, _ = make_topic_texts(20, seed=0)
    path = export_onnx(st, tmp_path / "m.onnx", 17)
    sess = ort_session(path, 1)
    assert check_parity(st, sess, texts) <= 1e-4
    if st.arch.embed_rank:  # the graph holds the two factors, never their (V, E) product
        import onnx

        shapes = {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
        assert (st.arch.vocab_size, 8) in shapes and (st.arch.vocab_size, 16) not in shapes
    # Dynamic batch and sequence: shapes never seen at export time give the torch numbers.
    for batch in (texts[:1], texts[:7], [" ".join(texts[:5])]):
        ids, mask = encode(st, batch)
        got = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, st.model.logits(ids, mask).detach().numpy(), atol=1e-4)
    ref = predict_logits(st, texts)
    np.testing.assert_allclose(onnx_predict_logits(sess, st, texts), ref, atol=1e-4)
    acc = (ref.argmax(1) == np.array(labels)).mean()
    assert acc > 0.6  # the tiny student learned the task, so the int8 comparison means something
    q = quantize_int8(path, tmp_path / "m8.onnx")
    assert q.stat().st_size < path.stat().st_size
    acc8 = (onnx_predict_logits(ort_session(q, 1), st, texts).argmax(1) == np.array(labels)).mean()
    assert acc8 >= acc - 0.05


def test_parity_failure_is_loud(tiny_student_dir, tmp_path):
    from components.lib.models.student_io import load_student
    from components.lib.publish.onnx import ParityError, check_parity, export_onnx, ort_session

    st = load_student(tiny_student_dir)
    sess = ort_session(export_onnx(st, tmp_path / "m.onnx", 17), 1)
    with torch.no_grad():  # the torch model drifts away from what was exported
        st.model.head.out.classifier.bias.add_(torch.tensor([0.0, 0.0, 50.0]))
    with pytest.raises(ParityError, match="max \\|Δlogit\\|"):
        check_parity(st, sess, make_topic_texts(5, seed=1)[0])


@pytest.mark.parametrize("student_fixture", ["tiny_student_dir", "tiny_factorised_student_dir"])  # full, factorised embeddings
def test_pyfunc_takes_raw_text_and_matches_the_student(student_fixture, request, tmp_path):
    tiny_student_dir = request.getfixturevalue(student_fixture)
    from components.lib.models.student_io import load_student, predict_logits
    from components.lib.publish.onnx import export_onnx
    from components.lib.publish.pyfunc import StudentTextClassifier
    from components.lib.publish.registry import pyfunc_bundle

    st = load_student(tiny_student_dir)
    bundle = pyfunc_bundle(tiny_student_dir, export_onnx(st, tmp_path / "model.onnx", 17), st, tmp_path / "student")
    assert not list(bundle.glob("*.safetensors"))  # ONNX only: no torch needed to serve
    model = StudentTextClassifier()
    model._load(bundle)
    texts = make_topic_texts(10, seed=3)[0] + ["", "a text with zzqxj unknownpieces " * 40]
    ref = predict_logits(st, texts)
    np.testing.assert_allclose(model.logits(texts), ref, atol=1e-4)
    out = model.predict(None, pd.DataFrame({"text": texts}))
    assert out["label"].tolist() == [LABELS[i] for i in ref.argmax(1)]
    probs = out[[f"prob_{n}" for n in LABELS]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(out["score"], probs.max(1))
    assert model.predict(None, texts[:3])["label"].tolist() == out["label"].tolist()[:3]
    assert model.predict(None, texts[0])["label"].tolist() == out["label"].tolist()[:1]


@pytest.mark.integration
def test_export_run_on_a_local_sqlite_store(evaluated_work_dir, tmp_path):
    import mlflow

    from components import export

    cfg = tiny_cfg(evaluated_work_dir, f"sqlite:///{tmp_path / 'mlflow.db'}",
                   export={"min_retention": 0.5, "output_dir": str(tmp_path / "export")})
    res = export.run(cfg)
    summary = json.loads((cfg.export_dir / "export_summary.json").read_text())
    assert res.parity_max_abs_diff <= 1e-4 and summary["onnx"]["parity_max_abs_diff"] == res.parity_max_abs_diff
    assert res.int8_kept == (Path(cfg.export_dir / "model.int8.onnx").exists())
    assert res.dev_accuracy_int8 is not None and summary["int8"]["throughput"] > 0
    rep = json.loads((evaluated_work_dir / "eval" / "report.json").read_text())
    assert summary["decision_split"] == "dev" and summary["dev"] == rep["dev"]
    assert res.dev_accuracy_fp32 == pytest.approx(rep["dev"]["student"], abs=1e-9)  # ONNX = torch on the dev split
    assert res.registered_version == "1" and res.champion and res.gate_reason is None
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mv = client.get_model_version_by_alias("tiny-student", "champion")
    assert mv.version == 1 or str(mv.version) == "1"
    assert mv.tags["mode"] == "soft+repr" and float(mv.tags["accuracy"]) == pytest.approx(summary["accuracy"], abs=1e-6)
    assert float(mv.tags["dev_accuracy"]) == pytest.approx(rep["dev"]["student"], abs=1e-9)
    assert len(mv.tags["data_card_sha256"]) in (0, 64)
    loaded = mlflow.pyfunc.load_model(str(cfg.export_dir / "pyfunc"))
    assert set(loaded.predict(pd.DataFrame({"text": ["goal striker cup", "bank loan tax"]}))["label"]) <= set(LABELS)


def test_export_without_tracking_saves_the_pyfunc_and_registers_nothing(evaluated_work_dir, tmp_path):
    from components import export

    cfg = tiny_cfg(evaluated_work_dir, None, export={"output_dir": str(tmp_path / "export"), "quantize": False})
    res = export.run(cfg)
    assert res.registered_version is None and not res.champion and "tracking disabled" in res.gate_reason
    assert (tmp_path / "export" / "pyfunc" / "MLmodel").exists() and res.onnx_int8_path is None


def test_export_needs_the_report(tmp_path, packaged_teacher_dir):
    from components import export
    from components.lib.core.errors import UserError

    root = make_work_dir(tmp_path / "w", packaged_teacher_dir, {"soft+repr": 0})
    with pytest.raises(UserError, match="report.json: not found"):
        export.run(tiny_cfg(root, None))


def _relabel_test(root: Path) -> None:
    """Every test label moved to a class the student does not predict: its test accuracy drops to 0."""
    from components.lib.contracts import data
    from components.lib.models.student_io import load_student, predict_logits

    test = data.read_labeled(root / "data" / "test.parquet")
    pred = predict_logits(load_student(root / "student" / "soft_repr"), test.table.column("text").to_pylist()).argmax(1)
    wrong = [int(p + 1) % len(test.label_names) for p in pred]
    table = data.labeled_table(test.table.column("id").to_pylist(), test.table.column("text").to_pylist(), wrong, test.label_names)
    data.write_table(table, root / "data" / "test.parquet")


@pytest.mark.integration
def test_test_labels_cannot_change_the_export_decisions(evaluated_work_dir, tmp_path):
    """int8 keep/drop and the champion gate read the dev split only: relabelling the whole test split
    (test retention falls to 0, below the gate's bar) changes neither decision."""
    from components import evaluate, export

    root = tmp_path / "w"
    shutil.copytree(evaluated_work_dir, root)
    rep = json.loads((root / "eval" / "report.json").read_text())
    bar = min(rep["dev"]["retention"], rep["retention"], 2.0) / 2  # passed on dev, and on test as it is
    runs = {}
    for name in ("as-is", "relabelled"):
        if name == "relabelled":
            _relabel_test(root)
            evaluate.run(tiny_cfg(root, None, student={"baseline": False}, evaluate={"tfidf_baseline": False}))
        rep = json.loads((root / "eval" / "report.json").read_text())
        res = export.run(tiny_cfg(root, f"sqlite:///{tmp_path / f'{name}.db'}",
                                  export={"output_dir": str(tmp_path / name), "min_retention": bar, "max_quant_drop": 0.0}))
        summary = json.loads((tmp_path / name / "export_summary.json").read_text())
        runs[name] = {"test_retention": rep["retention"], "bar": bar, "int8": summary["int8"], "dev": summary["dev"],
                      "champion": res.champion, "gate": res.gate_reason}
    before, after = runs["as-is"], runs["relabelled"]
    assert after["test_retention"] == 0.0 < after["bar"] < before["test_retention"]  # a test-read gate would flip
    assert before["champion"] and after["champion"] and before["gate"] is None and after["gate"] is None
    drop = lambda q: {k: v for k, v in q.items() if not k.startswith("throughput")}  # noqa: E731  (timings vary)
    assert drop(after["int8"]) == drop(before["int8"]) and after["dev"] == before["dev"]


@pytest.mark.integration
def test_a_baseline_that_beats_the_student_on_dev_withholds_champion(tmp_path, packaged_teacher_dir):
    """An untrained distilled student beside a trained labels-only baseline: report.md says so in its
    first lines, and export registers the version without the alias."""
    from components import evaluate, export

    root = make_work_dir(tmp_path / "w", packaged_teacher_dir, {"soft+repr": 0, "labels-only": 40}, teacher_steps=40)
    evaluate.run(tiny_cfg(root, None, evaluate={"tfidf_baseline": False}))  # the TF-IDF case is the next test
    rep = json.loads((root / "eval" / "report.json").read_text())
    dev = rep["dev"]
    assert dev["baseline"] > dev["student"] and dev["baseline_beats_student"]
    head = (root / "eval" / "report.md").read_text().splitlines()[:4]
    assert head[0] == "# Distillation report" and "Distillation did not pay off here" in head[2]
    assert f"baseline (dev accuracy {dev['baseline']:.3f}) beats the distilled student `soft+repr`" in head[2]
    res = export.run(tiny_cfg(root, f"sqlite:///{tmp_path / 'mlflow.db'}", export={"min_retention": 0.0, "quantize": False}))
    assert res.registered_version == "1" and not res.champion
    assert res.gate_reason == (f"the labels-only baseline's dev accuracy {dev['baseline']:.4f} beats the distilled "
                               f"student's {dev['student']:.4f}")


@pytest.mark.integration
def test_a_tfidf_baseline_that_beats_the_student_on_dev_withholds_champion(tmp_path, packaged_teacher_dir):
    """An untrained distilled student and TF-IDF + logistic regression fitted on the same labeled
    rows: TF-IDF wins on dev, report.md says so in its first lines, export withholds the alias and
    the gate names TF-IDF."""
    from components import evaluate, export

    root = make_work_dir(tmp_path / "w", packaged_teacher_dir, {"soft+repr": 0}, teacher_steps=40)
    evaluate.run(tiny_cfg(root, None))
    rep = json.loads((root / "eval" / "report.json").read_text())
    dev, tfidf = rep["dev"], rep["tfidf"]
    assert dev["tfidf"] == tfidf["dev"]["accuracy"] > dev["student"] and dev["tfidf_beats_student"]
    assert dev["baseline"] is None and not dev["baseline_beats_student"]
    head = (root / "eval" / "report.md").read_text().splitlines()[:4]
    assert head[0] == "# Distillation report" and "TF-IDF + logistic regression baseline beats the student here" in head[2]
    assert (f"trained on the same {tfidf['train_rows']} labeled texts (dev accuracy {dev['tfidf']:.3f}, "
            f"C = {tfidf['c']:g} chosen on dev) beats the distilled student `soft+repr`") in head[2]
    res = export.run(tiny_cfg(root, f"sqlite:///{tmp_path / 'mlflow.db'}", export={"min_retention": 0.0, "quantize": False}))
    assert res.registered_version == "1" and not res.champion
    assert res.gate_reason == (f"the TF-IDF + logistic regression baseline's dev accuracy {dev['tfidf']:.4f} beats the "
                               f"distilled student's {dev['student']:.4f}")
    assert json.loads((root / "export" / "export_summary.json").read_text())["dev"]["tfidf_beats_student"]
