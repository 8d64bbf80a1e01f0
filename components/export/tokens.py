"""export for token classification: the tagger as ONNX (+ int8) with a per-word parity check, an
MLflow pyfunc that takes raw sentences and returns entity spans, the registry gate.

Reads the chosen student (cfg.student_dir(cfg.student.mode)), cfg.eval_dir/report.json (its dev
block decides the gate) and cfg.data_dir/dev.parquet (parity and the int8 keep/drop on dev entity
F1; test is evaluate's alone). Writes cfg.export_dir atomically: model.onnx, model.int8.onnx (when
kept), pyfunc/, export_summary.json; only then registers (lib/registry.publish: a rerun finds the
version it registered before). ONNX export, parity and int8 are lib/publish/onnx.py's.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import token_data
from components.lib.core import ner_metrics
from components.lib.core.decode import decode_tags
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report
from components.lib.publish.onnx import (
    ParityError,
    check_word_parity,
    export_onnx,
    onnx_predict_word_logits,
    ort_session,
    try_int8,
)
from components.lib.publish.registry import (
    build_or_reuse,
    inputs_digest,
    pip_requirements,
    pyfunc_bundle,
    pyfunc_code_paths,
    read_report,
    register_export,
)
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger(__name__)

METRIC = "f1"
TAGGER_MODULES = ("publish/pyfunc.py", "core/tokens.py", "core/decode.py", "core/errors.py")  # what the pyfunc imports, shipped with it


class TokenExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    onnx_path: str
    onnx_int8_path: str | None
    parity_max_abs_diff: float
    dev_f1_fp32: float  # entity F1 of the fp32 ONNX tagger on the dev split
    dev_f1_int8: float | None  # the int8 graph's, which decided its keep/drop
    int8_kept: bool
    int8_reason: str
    pyfunc_dir: str
    model_uri: str | None
    registered_model: str | None
    registered_version: str | None
    champion: bool
    gate_reason: str | None


# ---------------------------------------------------------------- ONNX inference and parity

def onnx_f1(session, student, sentences, gold: list[list[str]], batch_size: int = 256) -> float:
    pred = decode_tags(onnx_predict_word_logits(session, student, sentences, batch_size), [len(x) for x in sentences], student.label_names)
    return ner_metrics.entity_scores(gold, pred)["f1"]


# ---------------------------------------------------------------- pyfunc

def sentence_texts(sentences: Sequence[Sequence[str]]) -> list[str]:
    """Test sentences as the raw strings a pyfunc user would send (words joined by spaces)."""
    return [" ".join(s) for s in sentences]


def tagger_kwargs(bundle: Path, code_paths: list[str], example_texts: list[str]) -> dict:
    """save_model/log_model arguments of the StudentTokenTagger pyfunc."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    from components.lib.publish.pyfunc import BUNDLE, StudentTokenTagger

    entity = Object([Property("entity", "string"), Property("text", "string"), Property("start", "long"),
                     Property("end", "long"), Property("score", "double")])
    return {
        "python_model": StudentTokenTagger(),
        "artifacts": {BUNDLE: str(bundle)},
        "code_paths": code_paths,
        # One unnamed string column, as for the classifier: a list of strings or a `text` DataFrame.
        "signature": ModelSignature(inputs=Schema([ColSpec("string")]),
                                    outputs=Schema([ColSpec(Array(entity), "entities"), ColSpec(Array("string"), "tags")])),
        "input_example": pd.DataFrame({"text": example_texts}),
        "pip_requirements": pip_requirements(),
    }


def expected_entities(session, student, texts: list[str], pretokenizer: str) -> list[list[dict]]:
    """What the tagger must return for texts, computed outside the pyfunc (pretokenize -> ONNX
    per-word logits -> tags -> spans), to check the saved model end to end."""
    from components.lib.core.tokens import pretokenize, spans

    words = [pretokenize(t, pretokenizer) for t in texts]
    sents = [[w for w, _, _ in ws] for ws in words]
    logits = onnx_predict_word_logits(session, student, sents)
    out = []
    for text, ws, lg, tags in zip(texts, words, logits, decode_tags(logits, [len(x) for x in sents], student.label_names), strict=True):
        conf = report.softmax(lg).max(axis=1) if len(lg) else np.zeros(0)
        out.append([{"entity": typ, "text": text[ws[a][1]:ws[b - 1][2]], "start": ws[a][1], "end": ws[b - 1][2],
                     "score": float(conf[a:b].mean())} for typ, a, b in spans(tags)])
    return out


def _same_entities(got: list[list[dict]], want: list[list[dict]]) -> bool:
    key = lambda e: (e["entity"], e["text"], int(e["start"]), int(e["end"]))  # noqa: E731
    return len(got) == len(want) and all(
        [key(e) for e in g] == [key(e) for e in w] and np.allclose([e["score"] for e in g], [e["score"] for e in w], atol=1e-4)
        for g, w in zip(got, want, strict=True))


# ---------------------------------------------------------------- the step

def build(cfg: PipelineConfig, student, student_dir: Path, sentences, gold, out: Path, scratch: Path) -> dict:
    """The export dir's contents into `out`; int8 kept or dropped on dev entity F1. -> the summary."""
    import mlflow.pyfunc

    ec = cfg.export
    onnx_path = export_onnx(student, out / "model.onnx", ec.opset)
    session = ort_session(onnx_path, ec.num_threads)
    worst = check_word_parity(student, session, sentences)
    f1_fp32 = onnx_f1(session, student, sentences, gold)
    log.info("ONNX parity on %d dev sentences: max |Δlogit| %.2e; dev entity F1 %.4f", len(sentences), worst, f1_fp32)
    q = {"dev_f1": None, "kept": False, "reason": "export.quantize is false", "path": None}
    if ec.quantize:
        q = _try_int8(onnx_path, out / "model.int8.onnx", student, sentences, gold, f1_fp32, cfg)
    serve = Path(q["path"]) if (q["kept"] and ec.serve_int8) else onnx_path

    extra = {"task": Task.token_classification.value, "pretokenizer": cfg.data.pretokenizer}
    bundle = pyfunc_bundle(student_dir, serve, student, scratch / "student", extra)
    texts = sentence_texts(sentences)
    mlflow.pyfunc.save_model(str(out / "pyfunc"), **tagger_kwargs(bundle, pyfunc_code_paths(scratch / "code", TAGGER_MODULES),
                                                                  texts[:2]))
    got = mlflow.pyfunc.load_model(str(out / "pyfunc")).predict(texts[:8])["entities"].tolist()
    want = expected_entities(ort_session(serve), student, texts[:8], cfg.data.pretokenizer)
    if not _same_entities(got, want):
        raise ParityError(f"pyfunc entities {got} differ from ONNX {want}")
    return {
        "task": Task.token_classification.value, "metric": METRIC,
        "onnx": {"path": "model.onnx", "opset": ec.opset, "bytes": onnx_path.stat().st_size,
                 "parity_max_abs_diff": worst, f"dev_{METRIC}": f1_fp32},
        "int8": {k: v for k, v in q.items() if k != "path"} | {"path": q["path"] and Path(q["path"]).name},
        "served": serve.name, "student_dir": str(student_dir), "mode": student.mode, "pretokenizer": cfg.data.pretokenizer,
    }


def run(cfg: PipelineConfig) -> TokenExportResult:
    import torch

    from components.lib.models.student_io import load_student

    if cfg.export.num_threads:
        torch.set_num_threads(cfg.export.num_threads)
    student_dir = cfg.student_dir(cfg.student.mode)
    student = load_student(student_dir)
    if not student.arch.per_token:
        raise UserError(f"{student_dir}/config.json: a {student.arch.task} student, but task is token-classification")
    rep = read_report(cfg)
    if rep.get("metric") != METRIC:
        raise UserError(f"{cfg.eval_dir / 'report.json'}: metric is {rep.get('metric')!r}, not the token report's 'f1' "
                        "(re-run evaluate with task token-classification)")
    dev = token_data.read_token_labeled(cfg.data_dir / "dev.parquet")
    if dev.label_names != student.label_names:
        raise UserError(f"{student_dir}/config.json: label_names {student.label_names} differ from the dev split's {dev.label_names}")
    sentences = dev.table.column("tokens").to_pylist()
    gold = ner_metrics.tag_names(dev.table.column("tags").to_pylist(), dev.label_names)
    decision = rep["dev"]
    ec = cfg.export
    inputs = inputs_digest(cfg, student_dir)

    with tracking.step_run(cfg, "export") as tr, tempfile.TemporaryDirectory() as scratch:
        tr.log_params({"export": ec.model_dump(mode="json"), "student_dir": str(student_dir), "mode": student.mode,
                       "task": Task.token_classification.value, "pretokenizer": cfg.data.pretokenizer})
        summary = build_or_reuse(
            cfg.export_dir, inputs, lambda out: build(cfg, student, student_dir, sentences, gold, out, Path(scratch)),
            {METRIC: float(rep["student"][METRIC]), "retention": float(rep["retention"]), "dev": decision})
        # The dir is complete: only now anything is registered.
        teacher = str(rep.get("teacher", {}).get("model", student.config.get("teacher", {})))
        tags = {"teacher": teacher, "task": Task.token_classification.value, "metric": METRIC,
                METRIC: repr(summary[METRIC]), "retention": repr(summary["retention"])}
        summary = register_export(cfg, tr.run_id is not None, summary, tags,
                                  lambda: _log_model(cfg.export_dir / "pyfunc", sentence_texts(sentences[:2])))
        champion, reason = summary["champion"], summary["gate_reason"]

        tr.log_metrics({METRIC: summary[METRIC], "retention": summary["retention"], f"dev_{METRIC}": decision["student"],
                        "dev_retention": decision["retention"], f"onnx_dev_{METRIC}": summary["onnx"][f"dev_{METRIC}"],
                        "parity_max_abs_diff": summary["onnx"]["parity_max_abs_diff"], "onnx_bytes": summary["onnx"]["bytes"],
                        **report.flat_metrics({k: v for k, v in summary["int8"].items() if k != "path"}, "int8.")})
        tr.set_tags({"distilflow.champion": champion, **({"distilflow.gate": reason} if reason else {})})
        tr.log_artifacts(cfg.export_dir, "export")

    int8 = cfg.export_dir / "model.int8.onnx"
    q = summary["int8"]
    return TokenExportResult(
        onnx_path=str(cfg.export_dir / "model.onnx"), onnx_int8_path=str(int8) if int8.exists() else None,
        parity_max_abs_diff=summary["onnx"]["parity_max_abs_diff"], dev_f1_fp32=summary["onnx"][f"dev_{METRIC}"],
        dev_f1_int8=q.get(f"dev_{METRIC}"), int8_kept=q["kept"], int8_reason=q["reason"],
        pyfunc_dir=str(cfg.export_dir / "pyfunc"), model_uri=summary["model_uri"], registered_model=summary["registered_model"],
        registered_version=summary["registered_version"], champion=champion, gate_reason=reason,
    )


def _log_model(pyfunc_dir: Path, example_texts: list[str]):
    """Log the saved pyfunc's own bundle and code (the bytes content_digest covers) to the step's run. -> mlflow's ModelInfo."""
    import mlflow.pyfunc

    from components.lib.publish.pyfunc import BUNDLE

    kwargs = tagger_kwargs(pyfunc_dir / "artifacts" / BUNDLE, [str(pyfunc_dir / "code" / "components")], example_texts)
    return mlflow.pyfunc.log_model(name="model", **kwargs)


def _try_int8(fp32: Path, out: Path, student, sentences, gold, f1_fp32: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="dev_f1", label="dev entity F1", base=f1_fp32, items=sentences, unit="sentences",
        measure=lambda sess: onnx_f1(sess, student, sentences, gold),
        predict=lambda sess, b: onnx_predict_word_logits(sess, student, b, bs),
    )
