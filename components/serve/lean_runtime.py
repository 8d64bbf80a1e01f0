"""The lean MLServer runtime for distilflow students: the exported pyfunc's bundle (ONNX graph,
tokenizer, vocab.json, pyfunc.json) loaded straight into an `mlserver.MLModel`, and the V2
request's BYTES input `text` decoded straight into the ONNX session. Per request there is no
pandas DataFrame in or out, no MLflow schema enforcement and no `pyfunc.predict` wrapper: the
texts go through the same checks as the MLflow runtime (distilflow_runtime.check_texts, so the
same 400s), then the student's own tokenisation and ONNX call, then V2 outputs built by hand.

The same answers as the pyfunc, by construction: the model is the pyfunc's own class
(python_model.pkl, from the `components` code the model ships in its code/ folder, not this
repo's), loaded with the pyfunc's own load_context on its own bundle; only the DataFrame at the
end is replaced. The outputs are what mlserver-mlflow's pandas codec writes for that DataFrame:
`label` (BYTES, content type str), `score` and `prob_<name>` (FP64) for a classifier, `entities`
and `tags` (one JSON document per text, content type pd_json) for a tagger, each of shape [N, 1],
under a response of content type pd. tests/test_serve_lean.py compares the two runtimes.

Only a distilflow student pyfunc loads here (a teacher's transformers model, or any other MLflow
model, fails to load with one line naming --runtime mlflow). Self-contained like runtime.py
(mlserver, the model's own code; no `components` import from this repo): the launcher copies it
into the MLServer model folder and the serving image puts it on PYTHONPATH, both as
`distilflow_lean.DistilflowLeanRuntime`, beside distilflow_runtime.py whose checks it uses.
Settings as for DistilflowRuntime (`parameters.extra`: max_texts, max_chars, threads). It works
with MLServer's adaptive batching (max_batch_size / max_batch_time): every output is flat, N
rows first, which is how MLServer splits a merged answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from distilflow_runtime import INPUT, MAX_CHARS, MAX_TEXTS, THREADS, check_texts, quiet_session
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters, ResponseOutput
from mlserver.utils import get_model_uri

PYFUNC_CONFIG = "pyfunc.json"  # components/lib/publish/pyfunc.py: the bundle's config


class NotAStudentError(MLServerError):
    def __init__(self, model_dir: Path, why: str):
        # The hint first: MLServer wraps it in its worker's error and the launcher keeps 240 characters.
        super().__init__(f"not a distilflow student pyfunc ({why}): serve it with --runtime mlflow; {model_dir}")


def load_student(model_dir: Path):
    """The pyfunc's python model, loaded from its own code and bundle as MLflow would load it, and
    the bundle folder (the artifact whose pyfunc.json names the ONNX graph)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.exists():
        raise NotAStudentError(model_dir, "no MLmodel file")
    flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
    artifacts = {k: model_dir / v["path"] for k, v in (flavor.get("artifacts") or {}).items()}
    bundles = [p for p in artifacts.values() if (p / PYFUNC_CONFIG).exists()]
    if not bundles or "python_model" not in flavor:
        raise NotAStudentError(model_dir, "no python model with a pyfunc.json bundle")
    if flavor.get("code"):
        sys.path.insert(0, str(model_dir / flavor["code"]))  # the model's own `components`, as MLflow does
    import cloudpickle  # mlflow's dependency: how it saved python_model.pkl

    with open(model_dir / flavor["python_model"], "rb") as f:
        model = cloudpickle.load(f)
    if not (hasattr(model, "tag") or hasattr(model, "logits")):
        raise NotAStudentError(model_dir, f"its python model is a {type(model).__name__}")
    model.load_context(SimpleNamespace(artifacts={k: str(v) for k, v in artifacts.items()}, model_config={}))
    return model, bundles[0]


def _column(name: str, values: list, datatype: str, content_type: str | None = None) -> ResponseOutput:
    params = Parameters(content_type=content_type) if content_type else None
    return ResponseOutput(name=name, shape=[len(values), 1], datatype=datatype, data=values, parameters=params)


def _json_column(name: str, values: list) -> ResponseOutput:
    """One JSON document per row, as the pandas codec encodes a column of lists (content type pd_json)."""
    docs = [json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() for v in values]
    return _column(name, docs, "BYTES", "pd_json")


class DistilflowLeanRuntime(MLModel):
    """A distilflow student (classifier or tagger) on one BYTES input `text` (N strings)."""

    async def load(self) -> bool:
        model_dir = Path(await get_model_uri(self._settings))
        self.student, bundle = load_student(model_dir)
        self.softmax = sys.modules[type(self.student).__module__]._softmax  # the pyfunc's own
        self.tagger = hasattr(self.student, "tag")
        extra = (self._settings.parameters.extra if self._settings.parameters else None) or {}
        self.max_texts = int(extra.get("max_texts", MAX_TEXTS))
        self.max_chars = int(extra.get("max_chars", MAX_CHARS))
        threads = int(extra.get("threads", THREADS))
        if threads > 0:  # one thread, no spinning: see runtime.py
            graph = bundle / json.loads((bundle / PYFUNC_CONFIG).read_text())["onnx"]
            self.student.session = quiet_session(graph, threads)
        self.inputs = [MetadataTensor(name=INPUT, datatype="BYTES", shape=[-1],
                                      parameters=Parameters(content_type="str"))]
        names = ["entities", "tags"] if self.tagger else ["label", "score",
                                                          *(f"prob_{n}" for n in self.student.label_names)]
        types = ["BYTES", "BYTES"] if self.tagger else ["BYTES", *["FP64"] * (len(names) - 1)]
        self.outputs = [MetadataTensor(name=n, datatype=t, shape=[-1, 1]) for n, t in zip(names, types, strict=True)]
        return True

    def classify(self, texts: list[str]) -> list[ResponseOutput]:
        probs = self.softmax(self.student.logits(texts))  # (N, C) float64
        best = probs.argmax(axis=1)  # (N,)
        names = self.student.label_names
        outputs = [_column("label", [names[i].encode() for i in best], "BYTES", "str"),
                   _column("score", probs[np.arange(len(best)), best].tolist(), "FP64")]
        outputs += [_column(f"prob_{n}", probs[:, c].tolist(), "FP64") for c, n in enumerate(names)]
        return outputs

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = check_texts(payload, self.max_texts, self.max_chars)
        if self.tagger:
            entities, tags = self.student.tag(texts)
            outputs = [_json_column("entities", entities), _json_column("tags", tags)]
        else:
            outputs = self.classify(texts)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 parameters=Parameters(content_type="pd"), outputs=outputs)
