"""export for token classification: per-word ONNX parity (and its failure), int8, the NER pyfunc over
raw sentences (entity spans with character offsets), a run without tracking, the registry gate on F1.

The tiny NER models come from tests/helpers.py; the tiny_tagger_dir and evaluated_ner_work_dir fixtures are in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import MAX_LEN, NER_TAGS, make_ner_sentences, ner_cfg


def torch_entities(student, texts: list[str], mode: str = "words") -> list[list[tuple[str, str, int, int]]]:
    """The torch student's spans over raw texts: pretokenize -> predict_tags -> tokens.spans -> char offsets."""
    from components.lib.core.tokens import pretokenize, spans
    from components.lib.models.student_io import predict_tags

    words = [pretokenize(t, mode) for t in texts]
    tags = predict_tags(student, [[w for w, _, _ in ws] for ws in words])
    return [[(typ, text[ws[a][1]:ws[b - 1][2]], ws[a][1], ws[b - 1][2]) for typ, a, b in spans(t)]
            for text, ws, t in zip(texts, words, tags, strict=True)]


TEXTS = [
    "yesterday Alice met Bob Smith near New York.",
    "acme corp hired carol jones in paris",
    "",
    "  globex , initech and hooli said that umbrella group will grow  ",
    "the office of acme corp is in cape town " * 6,  # past MAX_LEN pieces: the tail is cut off (O)
]


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("student_fixture", ["tiny_tagger_dir", "tiny_factorised_tagger_dir"])  # full, factorised embeddings
def test_tagger_onnx_parity_dynamic_axes_and_int8(student_fixture, request, tmp_path):
    tiny_tagger_dir = request.getfixturevalue(student_fixture)
    from components.export.tokens import onnx_f1
    from components.lib.core import ner_metrics
    from components.lib.models.student_io import load_student, pad_batch, predict_word_logits, word_ids
    from components.lib.publish.onnx import (
        check_word_parity,
        export_onnx,
        onnx_predict_word_logits,
        ort_session,
        quantize_int8,
    )

    st = load_student(tiny_tagger_dir)
    sents, tags, _ = make_ner_sentences(20, seed=9)
    path = export_onnx(st, tmp_path / "m.onnx", 17)
    sess = ort_session(path, 1)
    assert check_word_parity(st, sess, sents) <= 1e-4
    # Dynamic batch, sequence and words: shapes never seen at export time give the torch numbers at
    # every piece asked for (the graph's rows/cols inputs: the head runs there alone).
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "rows", "cols"]
    for batch in (sents[:1], sents[:7], [sum(sents[:4], [])]):
        ids, mask = pad_batch(word_ids(st, batch)[0])
        rows, cols = mask.nonzero(as_tuple=True)
        got = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "rows": rows.numpy(), "cols": cols.numpy()})[0]
        assert got.shape == (int(mask.sum()), len(NER_TAGS))
        np.testing.assert_allclose(got, st.model.logits(ids, mask)[rows, cols].detach().numpy(), atol=1e-4)
    ref = predict_word_logits(st, sents)
    for a, b in zip(onnx_predict_word_logits(sess, st, sents), ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    gold = ner_metrics.tag_names(tags, NER_TAGS)
    f1 = onnx_f1(sess, st, sents, gold, "constrained")
    assert f1 > 0.5  # the tiny tagger learned the task, so the int8 comparison means something
    q = quantize_int8(path, tmp_path / "m8.onnx")
    assert q.stat().st_size < path.stat().st_size
    assert onnx_f1(ort_session(q, 1), st, sents, gold, "constrained") >= f1 - 0.1


def test_a_tagger_graph_exported_before_rows_and_cols_still_serves(tiny_tagger_dir, tmp_path):
    """A model.onnx of an earlier export ((B, T, C) logits per piece, two inputs) gives the same
    per-word logits through onnx_predict_word_logits and the parity check."""
    from components.lib.core.student import LogitsOnly
    from components.lib.models.student_io import encode, load_student, predict_word_logits
    from components.lib.publish.onnx import check_word_parity, onnx_predict_word_logits, ort_session

    st = load_student(tiny_tagger_dir)
    ids, mask = encode(st, ["an example to trace", "a second, longer example"])
    path = tmp_path / "old.onnx"
    with torch.no_grad():
        torch.onnx.export(LogitsOnly(st.model).eval(), (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"},
                                        "logits": {0: "b", 1: "t"}})
    sess = ort_session(path, 1)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    sents = make_ner_sentences(12, seed=4)[0]
    assert check_word_parity(st, sess, sents) <= 1e-4
    for a, b in zip(onnx_predict_word_logits(sess, st, sents), predict_word_logits(st, sents), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_tagger_parity_failure_is_loud(tiny_tagger_dir, tmp_path):
    from components.lib.models.student_io import load_student
    from components.lib.publish.onnx import ParityError, check_word_parity, export_onnx, ort_session

    st = load_student(tiny_tagger_dir)
    sess = ort_session(export_onnx(st, tmp_path / "m.onnx", 17), 1)
    with torch.no_grad():  # the torch model drifts away from what was exported
        st.model.head.out.classifier.bias[3] += 50.0
    with pytest.raises(ParityError, match="per-word argmax"):
        check_word_parity(st, sess, make_ner_sentences(5, seed=1)[0])


@pytest.mark.parametrize("student_fixture", ["tiny_tagger_dir", "tiny_factorised_tagger_dir"])  # full, factorised embeddings
def test_tagger_pyfunc_returns_the_students_spans(student_fixture, request, tmp_path):
    tiny_tagger_dir = request.getfixturevalue(student_fixture)
    from components.lib.core.tokens import pretokenize
    from components.lib.evaluation import report
    from components.lib.models.student_io import load_student, predict_tags, predict_word_logits
    from components.lib.publish.onnx import export_onnx
    from components.lib.publish.pyfunc import StudentTokenTagger
    from components.lib.publish.registry import pyfunc_bundle

    st = load_student(tiny_tagger_dir)
    bundle = pyfunc_bundle(tiny_tagger_dir, export_onnx(st, tmp_path / "model.onnx", 17), st, tmp_path / "student",
                           {"task": "token-classification", "pretokenizer": "words", "decoding": "constrained"})
    assert not list(bundle.glob("*.safetensors"))  # ONNX only: no torch needed to serve
    model = StudentTokenTagger()
    model._load(bundle)
    out = model.predict(None, pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["entities", "tags"] and len(out) == len(TEXTS)
    want = torch_entities(st, TEXTS)
    assert sum(map(len, want)) >= 4  # the tagger finds entities, so the comparison means something
    for text, ents, expected in zip(TEXTS, out["entities"], want, strict=True):
        assert [(e["entity"], e["text"], e["start"], e["end"]) for e in ents] == expected
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
    # tags: one per pre-tokenised word, equal to the torch student's, the cut-off tail O
    words = [[w for w, _, _ in pretokenize(t)] for t in TEXTS]
    assert out["tags"].tolist() == predict_tags(st, words)
    assert len(out["tags"][4]) == len(words[4]) and set(out["tags"][4][MAX_LEN:]) == {"O"}
    # score: the mean over the span's words of their decoded tag's softmax probability (here the argmax's:
    # this tagger's argmax tags are valid IOB2)
    first = out["entities"][0][0]
    ws = pretokenize(TEXTS[0])
    a = next(i for i, w in enumerate(ws) if w[1] == first["start"])
    b = next(i for i, w in enumerate(ws) if w[2] == first["end"]) + 1
    conf = report.softmax(predict_word_logits(st, [words[0]])[0]).max(axis=1)
    assert first["score"] == pytest.approx(conf[a:b].mean(), abs=1e-5)
    # other input shapes MLflow passes through
    assert model.predict(None, TEXTS[:2])["tags"].tolist() == out["tags"].tolist()[:2]
    assert model.predict(None, TEXTS[1])["entities"].tolist() == out["entities"].tolist()[1:2]


def test_tagger_pyfunc_decodes_constrained_where_argmax_breaks_iob2(tiny_tagger_dir, tmp_path):
    """A tagger pushed towards I-PER (its classifier bias raised) emits O I-PER and I-PER at sentence
    start under argmax: the pyfunc's tags are core/decode.py's constrained decoding of the same logits
    (never a forbidden transition), and a bundle saved without `decoding` still decodes by argmax."""
    from components.lib.core.decode import decode_tags, invalid_transitions
    from components.lib.core.tokens import pretokenize
    from components.lib.models.student_io import load_student, predict_word_logits
    from components.lib.publish.onnx import export_onnx
    from components.lib.publish.pyfunc import PYFUNC_CONFIG, StudentTokenTagger
    from components.lib.publish.registry import pyfunc_bundle

    st = load_student(tiny_tagger_dir)
    with torch.no_grad():
        st.model.head.out.classifier.bias[NER_TAGS.index("I-PER")] += 14.0  # its logits span about ±25
    texts = TEXTS + [" ".join(s) for s in make_ner_sentences(30, seed=3)[0]]
    sents = [[w for w, _, _ in pretokenize(t)] for t in texts]
    logits = predict_word_logits(st, sents)
    n_words = [len(s) for s in sents]
    argmax = decode_tags(logits, n_words, NER_TAGS, "argmax")
    want = decode_tags(logits, n_words, NER_TAGS, "constrained")
    assert invalid_transitions(argmax, NER_TAGS) > 5 and invalid_transitions(want, NER_TAGS) == 0 and want != argmax

    onnx = export_onnx(st, tmp_path / "model.onnx", 17)
    bundle = pyfunc_bundle(tiny_tagger_dir, onnx, st, tmp_path / "student",
                           {"task": "token-classification", "pretokenizer": "words", "decoding": "constrained"})
    model = StudentTokenTagger()
    model._load(bundle)
    assert model.predict(None, texts)["tags"].tolist() == want
    conf = json.loads((bundle / PYFUNC_CONFIG).read_text())
    del conf["decoding"]  # as exported before decodings existed
    (bundle / PYFUNC_CONFIG).write_text(json.dumps(conf))
    model._load(bundle)
    assert model.predict(None, texts)["tags"].tolist() == argmax


def test_token_export_without_tracking_round_trips_through_mlflow(evaluated_ner_work_dir, tmp_path):
    import mlflow.pyfunc

    from components import export
    from components.lib.models.student_io import load_student

    cfg = ner_cfg(evaluated_ner_work_dir, None, export={"output_dir": str(tmp_path / "export")})
    res = export.run(cfg)
    out = tmp_path / "export"
    summary = json.loads((out / "export_summary.json").read_text())
    assert res.parity_max_abs_diff <= 1e-4 and summary["onnx"]["parity_max_abs_diff"] == res.parity_max_abs_diff
    assert summary["task"] == "token-classification" and summary["metric"] == "f1" and summary["pretokenizer"] == "words"
    assert summary["decoding"] == "constrained"
    assert json.loads((out / "pyfunc" / "artifacts" / "student" / "pyfunc.json").read_text())["decoding"] == "constrained"
    rep = json.loads((evaluated_ner_work_dir / "eval" / "report.json").read_text())
    assert summary["f1"] == rep["student"]["f1"] and summary["retention"] == rep["retention"]
    assert res.dev_f1_fp32 == pytest.approx(rep["dev"]["student"], abs=1e-9)  # ONNX tags = torch tags on the dev split
    assert res.dev_f1_int8 is not None and res.int8_kept == (out / "model.int8.onnx").exists()
    assert summary["decision_split"] == "dev" and summary["dev"] == rep["dev"] and summary["int8"]["reason"].startswith("dev entity F1")
    assert res.registered_version is None and not res.champion and "tracking disabled" in res.gate_reason
    assert (out / "model.onnx").stat().st_size > 1000 and (out / "pyfunc" / "MLmodel").exists()
    shipped = out / "pyfunc" / "code" / "components" / "lib"
    assert {p.relative_to(shipped).as_posix() for p in shipped.rglob("*.py")} >= {
        "publish/pyfunc.py", "core/tokens.py", "core/decode.py", "core/errors.py"}

    loaded = mlflow.pyfunc.load_model(str(out / "pyfunc"))
    assert loaded.metadata.signature.outputs.input_names() == ["entities", "tags"]
    pred = loaded.predict(pd.DataFrame({"text": TEXTS}))
    want = torch_entities(load_student(cfg.student_dir(cfg.student.mode)), TEXTS)
    got = [[(e["entity"], e["text"], e["start"], e["end"]) for e in ents] for ents in pred["entities"]]
    assert got == want and sum(map(len, got)) >= 4
    assert all(t[e["start"]:e["end"]] == e["text"] for t, ents in zip(TEXTS, pred["entities"], strict=True) for e in ents)
    assert loaded.predict(TEXTS)["entities"].tolist() == pred["entities"].tolist()
    # the served tags are evaluate's: its decoding (report.json's) of the student's logits on the same sentences
    from components.evaluate.hooks import Examples
    from components.evaluate.tokens import predicted_tags
    from components.lib.core.tokens import pretokenize
    from components.lib.models.student_io import predict_word_logits

    words = [[w for w, _, _ in pretokenize(t)] for t in TEXTS]
    student = load_student(cfg.student_dir(cfg.student.mode))
    evaluated = predicted_tags(predict_word_logits(student, words), Examples(words, None, None), student.label_names, rep["decoding"])
    assert pred["tags"].tolist() == evaluated


def test_exported_tagger_gives_the_same_spans_in_a_fresh_process(evaluated_ner_work_dir, tmp_path):
    """The pyfunc dir export writes is whole: loaded from it in a fresh Python (cwd outside the repo,
    no PYTHONPATH), every `components` module it imports (the tagger, core/tokens.py, core/decode.py,
    core/errors.py) comes from its code_paths, and the spans are the ones loaded in this process."""
    import mlflow.pyfunc

    from components import export

    cfg = ner_cfg(evaluated_ner_work_dir, None, export={"output_dir": str(tmp_path / "export"), "quantize": False})
    export.run(cfg)
    pyfunc_dir = tmp_path / "export" / "pyfunc"
    here = mlflow.pyfunc.load_model(str(pyfunc_dir)).predict(TEXTS)
    script = textwrap.dedent("""
        import json, sys
        assert "components" not in sys.modules
        import mlflow.pyfunc
        out = mlflow.pyfunc.load_model(sys.argv[1]).predict(json.loads(sys.argv[2]))
        files = {n: m.__file__ for n, m in sys.modules.items() if n.startswith("components") and getattr(m, "__file__", None)}
        print(json.dumps({"entities": out["entities"].tolist(), "tags": out["tags"].tolist(), "files": files}))
    """)
    (tmp_path / "elsewhere").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script, str(pyfunc_dir), json.dumps(TEXTS)], cwd=tmp_path / "elsewhere",
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the editable install could serve a module the model lacks from the repo: none may come from there
    assert {"components.lib.publish.pyfunc", "components.lib.core.decode", "components.lib.core.tokens"} <= set(got["files"])
    assert all(Path(f).resolve().is_relative_to((pyfunc_dir / "code").resolve()) for f in got["files"].values()), got["files"]
    assert got["tags"] == [list(t) for t in here["tags"]]
    key = lambda ents: [(e["entity"], e["text"], e["start"], e["end"]) for e in ents]  # noqa: E731
    want = here["entities"].tolist()
    assert [key(e) for e in got["entities"]] == [key(e) for e in want] and sum(map(len, want)) >= 4
    for g, w in zip(got["entities"], want, strict=True):
        assert [e["score"] for e in g] == pytest.approx([e["score"] for e in w], abs=1e-6)


def test_token_export_refuses_a_classification_report(evaluated_ner_work_dir, tmp_path):
    from components import export
    from components.lib.core.errors import UserError

    root = tmp_path / "w"
    shutil.copytree(evaluated_ner_work_dir, root)
    rep = json.loads((root / "eval" / "report.json").read_text())
    (root / "eval" / "report.json").write_text(json.dumps({**rep, "metric": "accuracy"}))
    with pytest.raises(UserError, match="metric is 'accuracy'"):
        export.run(ner_cfg(root, None))
    # a report decoded otherwise than evaluate.decoding says: its dev scores are not the tagger's to ship
    (root / "eval" / "report.json").write_text(json.dumps({**rep, "decoding": "argmax"}))
    with pytest.raises(UserError, match=r"report.json: tags were decoded 'argmax' but evaluate.decoding is 'constrained'"):
        export.run(ner_cfg(root, None, export={"output_dir": str(tmp_path / "x")}))
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_token_registry_gate_on_entity_f1(evaluated_ner_work_dir, tmp_path):
    import mlflow

    from components import export
    from components.lib.models.student_io import load_student

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rep = json.loads((evaluated_ner_work_dir / "eval" / "report.json").read_text())
    f1, retention = rep["dev"]["student"], rep["dev"]["retention"]  # what the gate reads

    def export_run(name: str, **ec):  # each call another pipeline run
        return export.run(ner_cfg(evaluated_ner_work_dir, uri, export={"quantize": False, "output_dir": str(tmp_path / name), **ec},
                                  tracking={"kfp_run_id": f"kfp-{name}"}))

    first = export_run("a", min_retention=0.0)
    assert (first.registered_version, first.champion, first.gate_reason) == ("1", True, None)
    client = mlflow.MlflowClient(uri, uri)
    mv = client.get_model_version_by_alias("tiny-tagger", "champion")
    assert mv.tags["metric"] == "f1" and mv.tags["task"] == "token-classification"
    assert float(mv.tags["dev_f1"]) == pytest.approx(f1, abs=1e-9) and float(mv.tags["dev_retention"]) == pytest.approx(retention)
    assert float(mv.tags["f1"]) == pytest.approx(rep["student"]["f1"], abs=1e-9)  # the test score, for information
    # a bar above the student's retention: registered, but the alias stays
    assert retention < 1.9  # precondition: export.min_retention goes up to 2
    bar = min(2.0, retention + 0.5)
    second = export_run("b", min_retention=bar)
    assert second.registered_version == "2" and not second.champion
    assert second.gate_reason == f"dev retention {retention:.4f} < export.min_retention {bar:.4f}"
    assert str(client.get_model_version_by_alias("tiny-tagger", "champion").version) == "1"
    # The champion loads by alias in a fresh process outside the repo (cwd elsewhere, no PYTHONPATH):
    # the tagger and the tokens.py/errors.py it imports come from the model's code_paths.
    script = textwrap.dedent("""
        import json, sys
        import mlflow.pyfunc
        model = mlflow.pyfunc.load_model("models:/tiny-tagger@champion")
        out = model.predict(["acme corp hired carol jones in paris", ""])
        mod = sys.modules["components.lib.core.tokens"].__file__
        print(json.dumps({"entities": out["entities"].tolist(), "tags": out["tags"].tolist(), "tokens": mod}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/" in got["tokens"] and str(Path(__file__).parents[1]) not in got["tokens"]
    text = "acme corp hired carol jones in paris"
    want = torch_entities(load_student(evaluated_ner_work_dir / "student" / "soft_repr"), [text])[0]
    assert [(e["entity"], e["text"], e["start"], e["end"]) for e in got["entities"][0]] == want and want
    assert got["entities"][1] == [] and got["tags"][1] == []


def test_gate_names_the_headline_metric():
    from components.lib.publish.registry import gate

    assert gate(0.5, 1.0, 0.9, 0.6, "2", metric="f1") == "dev f1 0.5000 below champion v2 (0.6000)"
    assert gate(0.6, 1.0, 0.9, 0.6, "2", metric="f1") is None  # as good as the champion
