"""evaluate for token classification: entity F1 equal to ner_metrics on the same predictions, the
report's keys, per-language scores (macro over languages, retention, student OOV), tables, plots,
MLflow logging, and bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from components.lib.core.errors import UserError
from tests.helpers import build_tiny_student, make_ner_work_dir, ner_cfg


def test_tag_agreement_and_classification_report_metric():
    from components.evaluate.tokens import tag_agreement
    from components.lib.evaluation.protocol import build_report

    assert tag_agreement([["O", "B-PER"], ["O"]], [["O", "I-PER"], ["O"]]) == pytest.approx(2 / 3)
    assert tag_agreement([], []) == 1.0
    # classification reports now say which metric is the headline (retention, the export gate)
    model = {"accuracy": 0.8, "params": 10, "throughput": 2.0, "throughput_onnx": 3.0, "latency_ms": {}, "latency_ms_onnx": {},
             "mode": "soft", "dev": {"accuracy": 0.7}}
    teacher = {**model, "accuracy": 1.0, "dev": {"accuracy": 0.875}}
    baseline = {**model, "mode": "labels-only", "dev": {"accuracy": 0.75}}
    rep = build_report(_cls_cfg(), teacher, {"soft": model, "labels-only": baseline}, ["a", "b"], 4, None, dev_rows=8)
    assert rep["metric"] == "accuracy" and rep["retention"] == pytest.approx(0.8)
    # the dev block export decides on: here the baseline beats the distilled student on dev
    assert rep["dev"] == {"split": "dev", "rows": 8, "metric": "accuracy", "teacher": 0.875, "student": 0.7,
                          "students": {"soft": 0.7, "labels-only": 0.75}, "baseline": 0.75,
                          "retention": pytest.approx(0.8), "baseline_beats_student": True,
                          "tfidf": None, "tfidf_beats_student": False}
    # with a TF-IDF entry: beside the baseline in the test block, its dev score in the dev block
    tfidf = {**model, "accuracy": 0.6, "dev": {"accuracy": 0.72}}
    rep = build_report(_cls_cfg(), teacher, {"soft": model}, ["a", "b"], 4, None, dev_rows=8, tfidf=tfidf)
    assert rep["tfidf"] is tfidf and "baseline" not in rep
    assert (rep["dev"]["tfidf"], rep["dev"]["tfidf_beats_student"], rep["dev"]["baseline"]) == (0.72, True, None)


def test_languages_summary_by_hand():
    from components.evaluate.tokens import languages_summary

    def model(mode, **f1):
        return {"mode": mode, "per_language": {lang: {"f1": v} for lang, v in f1.items()}}

    teacher, baseline = model(None, da=0.8, hr=0.0), model("labels-only", da=0.4, hr=0.1)
    student = {**model("soft+repr", da=0.6, hr=0.3), "oov_rate_per_language": {"da": 0.1, "hr": 0.2}}
    s = languages_summary(teacher, student, baseline)
    # da 0.6 / 0.8 = 0.75; hr: the teacher scores 0, so retention 0 (not inf) -> mean 0.375, min 0 (hr)
    assert s["per_language"]["da"] == pytest.approx({"teacher_f1": 0.8, "baseline_f1": 0.4, "student_f1": 0.6,
                                                     "retention": 0.75, "student_oov_rate": 0.1})
    assert s["per_language"]["hr"]["retention"] == 0.0
    assert (s["retention_mean"], s["retention_min"], s["retention_min_language"]) == pytest.approx((0.375, 0.0, "hr"))
    assert s["student"] == "soft+repr"
    assert "baseline_f1" not in languages_summary(teacher, student, None)["per_language"]["da"]


def _cls_cfg():
    from components.lib.settings.config import PipelineConfig

    return PipelineConfig.model_validate({"work_dir": "w", "student": {"mode": "soft"}})


def test_token_evaluate_report_per_language_and_mlflow(tmp_path, tiny_bert_dir, tiny_ner_teacher_dir, tiny_tagger_dir):
    import mlflow

    from components import evaluate
    from components.lib.contracts import token_data
    from components.lib.core import ner_metrics
    from components.lib.core.decode import decode_tags, invalid_transitions
    from components.lib.models.student_io import load_student, predict_tags
    from components.lib.models.teacher import load_teacher, score_words

    torch.set_num_threads(1)
    root = make_ner_work_dir(tmp_path / "w", tiny_bert_dir, {"labels-only": 2}, teacher=tiny_ner_teacher_dir, langs=True)
    shutil.copytree(tiny_tagger_dir, root / "student" / "soft_repr")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = evaluate.run(ner_cfg(root, uri))
    rep = json.loads((root / "eval" / "report.json").read_text())

    assert rep["task"] == "token-classification" and rep["metric"] == "f1"
    for key in ("teacher", "student", "baseline", "students", "retention", "params", "compression", "throughput",
                "speedup", "speedup_onnx", "latency_ms", "environment", "label_names", "test_rows", "test_words"):
        assert key in rep, key
    assert rep["student"]["mode"] == "soft+repr" and rep["baseline"]["mode"] == "labels-only"
    assert set(rep["students"]) == {"soft+repr", "labels-only"} and res.student_mode == "soft+repr"
    assert rep["test_rows"] == 30 and rep["languages"] == ["en", "xx"] and rep["entity_types"] == ["LOC", "ORG", "PER"]

    # The F1 figures are ner_metrics' on the same predictions, recomputed here outside the step.
    test = token_data.read_token_labeled(root / "data" / "test.parquet")
    sents = test.table.column("tokens").to_pylist()
    gold = ner_metrics.tag_names(test.table.column("tags").to_pylist(), test.label_names)
    langs = test.table.column("lang").to_pylist()
    student_pred = predict_tags(load_student(root / "student" / "soft_repr"), sents)
    model, tok = load_teacher(root / "teacher", task="token-classification")
    logits, _ = score_words(model, tok, sents, 48, 16)
    n_words = [len(s) for s in sents]
    teacher_pred = decode_tags(logits, n_words, test.label_names, "constrained")  # evaluate.decoding's default
    teacher_argmax = decode_tags(logits, n_words, test.label_names, "argmax")
    student_argmax = predict_tags(load_student(root / "student" / "soft_repr"), sents, decoding="argmax")
    assert rep["decoding"] == "constrained"
    for got, pred, argmax in ((rep["student"], student_pred, student_argmax), (rep["teacher"], teacher_pred, teacher_argmax)):
        want = ner_metrics.entity_scores(gold, pred)
        for k in ("f1", "precision", "recall", "macro_f1", "token_accuracy", "per_type"):
            assert got[k] == want[k], k  # exact: JSON round-trips floats
        assert got["per_language"] == ner_metrics.by_language(gold, pred, langs)
        # the decoding block: the F1 used is the headline; the other decoding's F1 and argmax's faults beside it
        assert invalid_transitions(pred, test.label_names) == 0
        assert got["decoding"] == {
            "used": "constrained", "constrained_f1": got["f1"], "argmax_f1": ner_metrics.entity_scores(gold, argmax)["f1"],
            "invalid_transitions_argmax": invalid_transitions(argmax, test.label_names),
            "sentences_changed": sum(a != b for a, b in zip(argmax, pred, strict=True))}
    # every model has the block (these tiny taggers' argmax tags are already valid IOB2: test_tokens.py
    # and test_export_tokens.py exercise the repair)
    assert all(m["decoding"]["used"] == "constrained" for m in rep["students"].values())
    # every model's language macro scores are the plain mean of its two languages' scores
    for m in (rep["teacher"], rep["student"], rep["baseline"]):
        for k in ("precision", "recall", "f1"):
            by_lang = m["per_language"]
            assert m[f"language_macro_{k}"] == pytest.approx((by_lang["en"][k] + by_lang["xx"][k]) / 2), k
    summary = rep["languages_summary"]
    assert summary["student"] == "soft+repr" and set(summary["per_language"]) == {"en", "xx"}
    for lang, row in summary["per_language"].items():
        assert row["teacher_f1"] == rep["teacher"]["per_language"][lang]["f1"]
        assert row["baseline_f1"] == rep["baseline"]["per_language"][lang]["f1"]
        assert row["student_f1"] == rep["student"]["per_language"][lang]["f1"]
        assert row["retention"] == pytest.approx(row["student_f1"] / row["teacher_f1"])
    rets = [row["retention"] for row in summary["per_language"].values()]
    assert summary["retention_mean"] == pytest.approx(sum(rets) / 2) and summary["retention_min"] == min(rets)

    # OOV share: recount the student's pieces outside the step (specials are CLS/SEP/pad)
    from components.lib.core.student import UNK
    from components.lib.core.tokens import encode_words

    for got in rep["students"].values():
        st = load_student(got["path"])
        specials = {st.tokenizer.cls_token_id, st.tokenizer.sep_token_id, st.tokenizer.pad_token_id}
        counts = {"en": [0, 0], "xx": [0, 0]}
        for ids, lang in zip(encode_words(st.tokenizer, sents, st.max_length).input_ids, langs, strict=True):
            text = [t for t in ids.tolist() if t not in specials]
            counts[lang][0] += sum(int(st.vocab.encode([t])[0]) == UNK for t in text)
            counts[lang][1] += len(text)
        assert got["oov_rate_per_language"] == pytest.approx({k: o / n for k, (o, n) in counts.items()})
        assert got["oov_rate"] == pytest.approx(sum(o for o, _ in counts.values()) / sum(n for _, n in counts.values()))
    assert rep["student"]["f1"] > 0.5 and rep["student"]["f1"] > rep["baseline"]["f1"]  # 60 steps vs 2
    same = sum(a == b for s, t in zip(student_pred, teacher_pred, strict=True) for a, b in zip(s, t, strict=True))
    assert rep["student"]["agreement"] == pytest.approx(same / sum(map(len, sents)))

    assert rep["retention"] == pytest.approx(rep["student"]["f1"] / rep["teacher"]["f1"]) == pytest.approx(res.retention)
    assert res.teacher_f1 == rep["teacher"]["f1"] and res.student_f1 == rep["student"]["f1"] == res.student_f1
    assert res.baseline_f1 == rep["baseline"]["f1"]
    assert rep["compression"] == pytest.approx(rep["params"]["teacher"] / rep["params"]["student"])
    assert rep["speedup"] == pytest.approx(rep["throughput"]["student"] / rep["throughput"]["teacher"])
    assert rep["params"]["teacher"] > rep["params"]["student"] > 0
    for m in (rep["teacher"], rep["student"]):
        assert m["throughput"] > 0 and m["latency_ms"]["p95"] >= m["latency_ms"]["p50"] > 0
    assert rep["student"]["throughput_onnx"] > 0 and rep["student"]["latency_ms_onnx"]["p50"] > 0
    assert rep["environment"]["torch_threads"] == 1

    md = (root / "eval" / "report.md").read_text()
    assert "Entity F1 per type" in md and "| PER |" in md and "Entity F1 per language" in md and "| xx |" in md
    assert "student `labels-only`" in md and "Retention" in md
    d = rep["teacher"]["decoding"]
    assert "Tags decoded `constrained`" in md and (f"| teacher | {d['argmax_f1']:.3f} | {d['constrained_f1']:.3f} "
                                                   f"| {d['invalid_transitions_argmax']} | {d['sentences_changed']} |") in md
    assert md.index("**Per-language retention**") < md.index("## What was distilled")
    assert f"mean {rep['languages_summary']['retention_mean']:.3f}" in md
    assert ("| language | teacher F1 | labels-only baseline F1 | student F1 | retention | student OOV | test sentences "
            "| entities |") in md
    vocab = rep["student"]["vocab"]
    assert vocab["size"] == len(load_student(rep["student"]["path"]).vocab) and f"Student vocabulary: {vocab['size']:,}" in md
    assert "| macro (unweighted) |" in md and "student OOV" in md and "(f1_per_language.png)" in md
    for name in ("f1_vs_speed.png", "f1_per_type.png", "f1_per_language.png"):
        assert (root / "eval" / name).read_bytes()[:4] == b"\x89PNG"

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.tags["distilflow.step"] == "evaluate" and run.data.tags["distilflow.task"] == "token-classification"
    assert run.data.metrics["retention"] == pytest.approx(rep["retention"])
    assert run.data.metrics["student.f1"] == pytest.approx(rep["student"]["f1"])
    assert run.data.metrics["teacher.decoding.argmax_f1"] == pytest.approx(rep["teacher"]["decoding"]["argmax_f1"])
    assert run.data.metrics["students.soft_repr.per_language.xx.f1"] == pytest.approx(rep["student"]["per_language"]["xx"]["f1"])
    assert "baseline.f1" in run.data.metrics
    for who in ("teacher", "student", "baseline"):
        assert run.data.metrics[f"{who}.language_macro_f1"] == pytest.approx(rep[who]["language_macro_f1"])
    assert run.data.metrics["student.per_language.en.f1"] == pytest.approx(rep["student"]["per_language"]["en"]["f1"])
    assert run.data.metrics["languages_summary.retention_min"] == pytest.approx(rep["languages_summary"]["retention_min"])
    assert "students.soft_repr.oov_rate_per_language.xx" in run.data.metrics
    assert {f.path for f in client.list_artifacts(run.info.run_id, "eval")} >= {"eval/report.json", "eval/report.md"}


def test_token_evaluate_without_lang_and_bad_inputs(evaluated_ner_work_dir, tmp_path, tiny_bert_dir, tiny_tagger_dir):
    from components import evaluate

    rep = json.loads((evaluated_ner_work_dir / "eval" / "report.json").read_text())
    assert "per_language" not in rep["student"] and rep["languages"] is None and "baseline" not in rep
    assert "per language" not in (evaluated_ner_work_dir / "eval" / "report.md").read_text()
    assert rep["languages_summary"] is None and "language_macro_f1" not in rep["student"]
    assert 0.0 <= rep["student"]["oov_rate"] < 1.0 and "oov_rate_per_language" not in rep["student"]
    assert not (evaluated_ner_work_dir / "eval" / "f1_per_language.png").exists()

    # a teacher without a token-classification head (the bare tiny BertModel) is refused
    with pytest.raises(UserError, match="not a token classifier"):
        evaluate.run(ner_cfg(evaluated_ner_work_dir, None, transfer={"teacher": str(tiny_bert_dir)},
                             evaluate={"output_dir": str(tmp_path / "eval")}))
    # a classification student is refused with the dir named
    cls_student = build_tiny_student(tmp_path / "cls", tiny_bert_dir, steps=0)
    with pytest.raises(UserError, match="sequence-classification student"):
        evaluate.run(ner_cfg(evaluated_ner_work_dir, None, evaluate={"output_dir": str(tmp_path / "eval")}),
                     student_dirs={"soft+repr": cls_student})
