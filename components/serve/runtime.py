"""distilflow's MLflow runtime (`--runtime mlflow`): MLServer's own MLflow runtime (mlserver-mlflow,
what KServe runs for `modelFormat: mlflow`) plus checks on the one input, so that a malformed
request is a 400 with a one-line reason instead of a 500 from inside the model. The lean runtime
(lean_runtime.py, the default for students) runs the same checks (check_texts) and sessions
(quiet_session) from here.

What stock MLServer 1.7.1 (mlserver_mlflow.MLflowRuntime) does without this class, measured: a wrong
input name or a second input is passed on (MLflow's unnamed string column accepts any column),
a 10,000-text batch and a 1 MB text are run, a numeric input or no input at all is a 500 (the
model's own exception, wrapped by the worker pool). Empty bodies, non-JSON, wrong content types
and non-UTF-8 bodies never get here: FastAPI answers them with a 422.

A text that is empty, or only whitespace and invisible characters (zero-width spaces, a BOM,
control characters: the tokenizer drops them all), is refused with a 400 naming its index
("text 3 is empty or only whitespace; ..."), for a classifier and a tagger alike: the student
would read nothing but [CLS] [SEP] and still answer with a confident label (a tagger, with an
empty result that looks like "no entities"). The whole request is refused, as for every other
check, so that no answer row stands for a text nobody sent.

Self-contained on purpose (mlserver, mlserver_mlflow, mlflow only; no `components` import): the
launcher copies this file into the MLServer model folder and the serving image puts it on
PYTHONPATH, both as `distilflow_runtime.DistilflowRuntime`. The pyfunc ships its own `components`
package through code_paths, and that copy must be the one the model loads.

Settings (model-settings.json `parameters.extra`, or MLSERVER_MODEL_EXTRA='{"max_texts": ...}'):
max_texts per request (default 1,024), max_chars per text (default 65,536; the student reads
only its first max_length word pieces anyway) and threads per worker (default 1; 0 keeps the
model's own). A request is a handful of texts, so parallelism comes from concurrent requests and
MLServer's worker processes, not from a model's thread pool: ONNX Runtime's default pool spins
its idle threads, which on the demo student (2 cores, 8 clients) burnt 0.6 of a core that the
HTTP side needed (one worker: 350 -> 403 requests/s, 1.94 -> 1.33 cores).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters
from mlserver.utils import get_model_uri
from mlserver_mlflow import MLflowRuntime, TensorDictCodec

INPUT = "text"
MAX_TEXTS = 1024
MAX_CHARS = 65536
THREADS = 1
INVISIBLE = ("Cc", "Cf")  # control and format characters (zero-width space, BOM): BERT's tokenizer drops them


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _flat(data) -> list:
    """V2 `data` as a flat list: [t, ...] or [[t], ...] (shape [N] or [N, 1])."""
    values = data.root if hasattr(data, "root") else data
    if not isinstance(values, list):
        return [values]
    out = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return out


def blank(text: str) -> bool:
    """Empty, or only whitespace and invisible characters (the tokenizer would see no word)."""
    # all() stops at the first visible character: the first one, for almost every text.
    return all(ch.isspace() or unicodedata.category(ch) in INVISIBLE for ch in text)


def check_texts(payload: InferenceRequest, max_texts: int, max_chars: int) -> list[str]:
    """The request's texts, or InferenceError (HTTP 400) naming what is wrong."""
    names = [i.name for i in payload.inputs]
    if len(names) != 1:
        raise InferenceError(f"expected one input named '{INPUT}', got {len(names)}: {names}")
    (inp,) = payload.inputs
    if inp.name != INPUT:
        raise InferenceError(f"unknown input '{_one_line(inp.name, 60)}': send the texts as the BYTES input '{INPUT}'")
    datatype = getattr(inp.datatype, "value", inp.datatype)
    if datatype != "BYTES":
        raise InferenceError(f"input '{INPUT}' must be BYTES (strings), got {datatype}")
    values = _flat(inp.data)
    n = 1
    for dim in inp.shape:
        n *= dim
    if n != len(values) or any(dim < 0 for dim in inp.shape):
        raise InferenceError(f"input '{INPUT}': shape {inp.shape} does not match its {len(values)} values")
    if not values:
        raise InferenceError(f"input '{INPUT}' holds no texts")
    if len(values) > max_texts:
        raise InferenceError(f"{len(values)} texts in one request; the limit is {max_texts} (send smaller batches)")
    texts = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InferenceError(f"text {i} is not valid UTF-8") from None
        if not isinstance(v, str):
            raise InferenceError(f"text {i} is a {type(v).__name__}, not a string")
        if len(v) > max_chars:
            raise InferenceError(f"text {i} has {len(v)} characters; the limit is {max_chars}")
        if blank(v):
            raise InferenceError(f"text {i} is empty or only whitespace; send the text to classify or tag, "
                                 "or leave it out of the batch")
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                raise InferenceError(f"text {i} is not valid UTF-8 (lone surrogate)") from None
        texts.append(v)
    return texts


def quiet_session(graph: Path, threads: int):
    """An ONNX Runtime CPU session on `threads` intra-op threads whose idle threads do not spin."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])


class DistilflowRuntime(MLflowRuntime):
    """MLflowRuntime with one BYTES input `text` (N strings) checked before the model sees it."""

    async def load(self) -> bool:
        await super().load()
        extra = (self._settings.parameters.extra if self._settings.parameters else None) or {}
        self.max_texts = int(extra.get("max_texts", MAX_TEXTS))
        self.max_chars = int(extra.get("max_chars", MAX_CHARS))
        threads = int(extra.get("threads", THREADS))
        if threads > 0:
            self._limit_threads(Path(await get_model_uri(self._settings)), threads)
        # MLflow's unnamed string column would be advertised as `input-0`; this runtime takes `text`.
        self.inputs = [MetadataTensor(name=INPUT, datatype="BYTES", shape=[-1],
                                      parameters=Parameters(content_type="str"))]
        return True

    def _limit_threads(self, model_dir: Path, threads: int) -> None:
        """torch's intra-op threads, and the student's ONNX Runtime session re-made from its bundle
        (pyfunc.json names the graph: components/lib/publish/pyfunc.py) with `threads` and no spinning."""
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        try:
            python_model = self._model.unwrap_python_model()
        except MlflowException:  # a built-in flavor (the teacher's transformers pipeline)
            return
        if getattr(python_model, "session", None) is None:
            return
        for spec in (self._model.metadata.flavors["python_function"].get("artifacts") or {}).values():
            conf = model_dir / spec["path"] / "pyfunc.json"
            if conf.exists():
                python_model.session = quiet_session(conf.parent / json.loads(conf.read_text())["onnx"], threads)
                return

    async def invocations(self, *args, **kwargs):
        """Not a custom handler here (no decorator): the unchecked MLflow scoring endpoint
        /invocations is off, so every request goes through check_texts on the V2 API."""
        raise InferenceError("use the V2 API: POST /v2/models/<name>/infer")

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = check_texts(payload, self.max_texts, self.max_chars)
        try:
            output = self._model.predict(texts)
        except MlflowException as err:  # schema enforcement: the request's fault, not the server's
            raise InferenceError(_one_line(err.message)) from None
        return self.encode_response(output, default_codec=TensorDictCodec)
