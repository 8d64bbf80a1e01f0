"""export's hooks for token classification (components/export/hooks.py ExportHooks): per-word
ONNX parity, dev entity F1 for the int8 keep/drop, and the pyfunc that takes raw sentences and
returns entity spans with character offsets. Tags are decoded as evaluate decoded them (report.json's
`decoding`, which must be evaluate.decoding), and pyfunc.json stores that decoding for the tagger.
The flow around them is components/export/__init__.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.export.hooks import Dev
from components.lib.contracts import token_data
from components.lib.core import ner_metrics
from components.lib.core.decode import decode_tags
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report
from components.lib.publish.onnx import ParityError, check_word_parity, onnx_predict_word_logits, try_int8
from components.lib.publish.registry import pip_requirements
from components.lib.settings.config import PipelineConfig

log = logging.getLogger(__name__)

METRIC = "f1"
TASK_KEYS = {"task": Task.token_classification.value, "metric": METRIC}
SEGMENTER_PACKAGES = {"jieba": ("jieba", "opencc-python-reimplemented")}  # pinned in the pyfunc's requirements
CODE_MODULES = ("publish/pyfunc.py", "core/tokens.py", "core/decode.py", "core/segment.py", "core/errors.py")  # what the pyfunc imports


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


RESULT = TokenExportResult


def check_student(student, student_dir: Path) -> None:
    if not student.arch.per_token:
        raise UserError(f"{student_dir}/config.json: a {student.arch.task} student, but task is token-classification")


def sentence_texts(sentences: Sequence[Sequence[str]]) -> list[str]:
    """Test sentences as the raw strings a pyfunc user would send (words joined by spaces)."""
    return [" ".join(s) for s in sentences]


def read_dev(cfg: PipelineConfig, rep: dict) -> Dev:
    """The dev sentences and their tag names, once the report is a token report (F1, not accuracy)."""
    if rep.get("metric") != METRIC:
        raise UserError(f"{cfg.eval_dir / 'report.json'}: metric is {rep.get('metric')!r}, not the token report's 'f1' "
                        "(re-run evaluate with task token-classification)")
    used = rep.get("decoding", "argmax")  # a report from before constrained decoding existed was argmax's
    if used != cfg.evaluate.decoding:
        raise UserError(f"{cfg.eval_dir / 'report.json'}: tags were decoded {used!r} but evaluate.decoding is "
                        f"{cfg.evaluate.decoding!r}; re-run evaluate (or set evaluate.decoding={used})")
    dev = token_data.read_token_labeled(cfg.data_dir / "dev.parquet")
    sentences = dev.table.column("tokens").to_pylist()
    gold = ner_metrics.tag_names(dev.table.column("tags").to_pylist(), dev.label_names)
    return Dev(dev.label_names, sentences, gold, sentence_texts(sentences))


# ---------------------------------------------------------------- ONNX

def onnx_f1(session, student, sentences, gold: list[list[str]], decoding: str, batch_size: int = 256) -> float:
    logits = onnx_predict_word_logits(session, student, sentences, batch_size)
    pred = decode_tags(logits, [len(x) for x in sentences], student.label_names, decoding)
    return ner_metrics.entity_scores(gold, pred)["f1"]


def check_onnx(student, session, dev: Dev, cfg: PipelineConfig) -> tuple[float, float]:
    worst = check_word_parity(student, session, dev.items)
    f1 = onnx_f1(session, student, dev.items, dev.gold, cfg.evaluate.decoding)
    log.info("ONNX parity on %d dev sentences: max |Δlogit| %.2e; dev entity F1 %.4f", len(dev.items), worst, f1)
    return worst, f1


def quantize(fp32: Path, out: Path, student, dev: Dev, base: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="dev_f1", label="dev entity F1", base=base, items=dev.items, unit="sentences",
        measure=lambda sess: onnx_f1(sess, student, dev.items, dev.gold, cfg.evaluate.decoding),
        predict=lambda sess, b: onnx_predict_word_logits(sess, student, b, bs),
    )


# ---------------------------------------------------------------- pyfunc

def pyfunc_config(cfg: PipelineConfig) -> dict:
    """pyfunc.json's task tells the pyfunc it is a tagger; the pre-tokeniser and segmenter split raw text as the
    data did; the decoding is evaluate's (read_dev checked the report used it), so serving tags as evaluate scored."""
    return {"task": Task.token_classification.value, "pretokenizer": cfg.data.pretokenizer, "segmenter": cfg.data.segmenter,
            "decoding": cfg.evaluate.decoding}


def pyfunc_kwargs(bundle: Path, code_paths: list[str], example_texts: list[str], label_names: list[str]) -> dict:
    """save_model/log_model arguments of the StudentTokenTagger pyfunc (its signature lists no labels:
    label_names is unused)."""
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
        "pip_requirements": pip_requirements(segmenter_packages(bundle)),
    }


def segmenter_packages(bundle: Path) -> tuple[str, ...]:
    """What the bundle's word segmenter (pyfunc.json) needs installed where the tagger serves."""
    from components.lib.publish.pyfunc import PYFUNC_CONFIG

    conf = json.loads((bundle / PYFUNC_CONFIG).read_text())
    return SEGMENTER_PACKAGES.get(str(conf.get("segmenter", "none")), ())


def expected_entities(session, student, texts: list[str], pretokenizer: str, decoding: str,
                      segmenter: str = "none") -> list[list[dict]]:
    """What the tagger must return for texts, computed outside the pyfunc (pretokenize -> ONNX
    per-word logits -> tags -> spans), to check the saved model end to end."""
    from components.lib.core.segment import segmenter as segmenter_of
    from components.lib.core.tokens import pretokenize, spans

    seg = segmenter_of(segmenter)
    words = [pretokenize(t, pretokenizer, seg) for t in texts]
    sents = [[w for w, _, _ in ws] for ws in words]
    logits = onnx_predict_word_logits(session, student, sents)
    out = []
    index = {name: i for i, name in enumerate(student.label_names)}
    for text, ws, lg, tags in zip(texts, words, logits, decode_tags(logits, [len(x) for x in sents], student.label_names, decoding),
                                  strict=True):
        chosen = np.array([index[t] for t in tags[: len(lg)]], dtype=np.int64)
        conf = report.softmax(lg)[np.arange(len(lg)), chosen] if len(lg) else np.zeros(0)  # the decoded tag's probability
        out.append([{"entity": typ, "text": text[ws[a][1]:ws[b - 1][2]], "start": ws[a][1], "end": ws[b - 1][2],
                     "score": float(conf[a:b].mean())} for typ, a, b in spans(tags)])
    return out


def _same_entities(got: list[list[dict]], want: list[list[dict]]) -> bool:
    key = lambda e: (e["entity"], e["text"], int(e["start"]), int(e["end"]))  # noqa: E731
    return len(got) == len(want) and all(
        [key(e) for e in g] == [key(e) for e in w] and np.allclose([e["score"] for e in g], [e["score"] for e in w], atol=1e-4)
        for g, w in zip(got, want, strict=True))


def check_pyfunc(model, session, student, texts: list[str], cfg: PipelineConfig) -> None:
    got = model.predict(texts)["entities"].tolist()
    want = expected_entities(session, student, texts, cfg.data.pretokenizer, cfg.evaluate.decoding, cfg.data.segmenter)
    if not _same_entities(got, want):
        raise ParityError(f"pyfunc entities {got} differ from ONNX {want}")
