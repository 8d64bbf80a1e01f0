"""Serving: the real MLServer (from .venv-serve, on the default lean runtime: components/serve/
lean_runtime.py with runtime.py's checks) on a free loopback port, one server per model kind, V2
requests; the bad requests; the KServe manifests. tests/test_serve_lean.py holds the MLflow runtime
beside it.

Tiny students come from conftest.py (tiny_student_dir, tiny_tagger_dir); their pyfuncs are saved
as the export step saves them (pyfunc_bundle + sequence.py's / tokens.py's pyfunc_kwargs). No mocks: the
predictions are compared with the same pyfunc loaded in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import LABELS, make_topic_texts

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "manifests" / "serving"
# No "" here: the runtime refuses a blank text with a 400 (tests/test_serve_faults.py).
TEXTS = make_topic_texts(4, seed=11)[0] + ["zzqxj unknownpieces " * 50, "Überraschung: café, naïve — 東京 🎉"]
SENTENCES = ["yesterday Alice met Bob Smith near New York.", "acme corp hired carol jones in paris",
             "the office of acme corp is in cape town " * 6]


def _save(model_dir: Path, student_dir: Path, out: Path, tagger: bool) -> Path:
    import mlflow.pyfunc

    from components.export import sequence, tokens
    from components.lib.models.student_io import load_student
    from components.lib.publish.onnx import export_onnx
    from components.lib.publish.registry import pyfunc_bundle, pyfunc_code_paths

    st = load_student(student_dir)
    extra = {"task": "token-classification", "pretokenizer": "words", "decoding": "constrained"} if tagger else None
    bundle = pyfunc_bundle(student_dir, export_onnx(st, out / "model.onnx", 17), st, out / "student", extra)
    task = tokens if tagger else sequence
    kwargs = task.pyfunc_kwargs(bundle, pyfunc_code_paths(out / "code", task.CODE_MODULES), ["a b", "c d"], st.label_names)
    mlflow.pyfunc.save_model(str(model_dir), **kwargs)
    return model_dir


@pytest.fixture(scope="module")
def cls_pyfunc(tiny_student_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-cls")
    return _save(out / "export" / "pyfunc", tiny_student_dir, out, tagger=False)


@pytest.fixture(scope="module")
def tagger_pyfunc(tiny_tagger_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-tagger")
    return _save(out / "pyfunc", tiny_tagger_dir, out, tagger=True)


def _served(model_dir: Path, name: str):
    from components.serve.server import start, stop

    server = start(model_dir, name=name)
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def cls_server(cls_pyfunc):
    yield from _served(cls_pyfunc, "tiny-student")


@pytest.fixture(scope="module")
def tagger_server(tagger_pyfunc):
    yield from _served(tagger_pyfunc, "tiny-tagger")


def _good(server) -> None:
    from components.serve.codec import infer

    assert server.alive()
    assert len(infer(server.infer_url, ["still serving"])) == 1


# ---------------------------------------------------------------- predictions

def test_classifier_over_v2_equals_the_pyfunc_in_process(cls_server, cls_pyfunc):
    import mlflow.pyfunc
    import numpy as np

    from components.serve.codec import infer

    rows = infer(cls_server.infer_url, TEXTS)
    want = mlflow.pyfunc.load_model(str(cls_pyfunc)).predict(TEXTS)
    assert [r["label"] for r in rows] == want["label"].tolist()
    assert set(rows[0]) == {"label", "score", *(f"prob_{n}" for n in LABELS)}
    for col in ["score", *(f"prob_{n}" for n in LABELS)]:
        np.testing.assert_allclose([r[col] for r in rows], want[col].to_numpy(), atol=1e-9)


def test_tagger_over_v2_equals_the_pyfunc_in_process(tagger_server, tagger_pyfunc):
    import mlflow.pyfunc

    from components.serve.codec import infer

    rows = infer(tagger_server.infer_url, SENTENCES)
    want = mlflow.pyfunc.load_model(str(tagger_pyfunc)).predict(SENTENCES)
    assert sum(len(r["entities"]) for r in rows) >= 3  # the tiny tagger finds spans: the comparison means something
    for row, ents, tags in zip(rows, want["entities"], want["tags"], strict=True):
        assert row["tags"] == list(tags)
        assert [{**e, "score": pytest.approx(e["score"], abs=1e-9)} for e in ents] == row["entities"]


def test_metadata_names_the_one_text_input(cls_server):
    with urllib.request.urlopen(f"{cls_server.url}/v2/models/{cls_server.name}", timeout=10) as resp:
        meta = json.loads(resp.read())
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("text", "BYTES")]
    assert {o["name"] for o in meta["outputs"]} == {"label", "score", *(f"prob_{n}" for n in LABELS)}


# ---------------------------------------------------------------- bad requests

def _v2(data, name="text", datatype="BYTES", shape=None) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}]}).encode()


BAD = {  # case: (body, content type, status, what the reason says)
    "empty body": (b"", "application/json", 422, "body: Field required"),
    "wrong content type": (_v2(["a text"]), "text/plain", 422, "valid dictionary"),
    "10,000 texts": (_v2(["a text"] * 10_000), "application/json", 400, "10000 texts in one request; the limit is 1024"),
    "1 MB text": (_v2(["x" * (1 << 20)]), "application/json", 400, "text 0 has 1048576 characters; the limit is 65536"),
    "non-UTF-8 bytes": (_v2(["caf\u00e9"]).replace(b"caf\\u00e9", b"caf\xe9"), "application/json", 422,
                        "not valid UTF-8"),
    "wrong input name": (_v2(["a text"], name="sentences"), "application/json", 400, "unknown input 'sentences'"),
    "lone surrogate": (_v2(["a text"]).replace(b"a text", b"\\ud800 text"), "application/json", 422, "surrogate"),
    "numbers": (_v2([1.5], datatype="FP32"), "application/json", 400, "must be BYTES (strings), got FP32"),
    "no input": (b'{"inputs": []}', "application/json", 400, "expected one input named 'text', got 0"),
    "shape mismatch": (_v2(["a", "b"], shape=[3]), "application/json", 400, "shape [3] does not match its 2 values"),
    "not JSON": (b"hello", "application/json", 422, "JSON decode error"),
}


@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "-"))
def test_bad_request_is_a_4xx_with_a_one_line_reason(cls_server, case):
    from components.serve.codec import error_reason, post

    body, content_type, status, reason = BAD[case]
    got, answer = post(cls_server.infer_url, body, content_type)
    text = error_reason(answer)
    assert (got, reason in text) == (status, True), f"{case}: HTTP {got} {text}"
    assert "\n" not in text and len(text) <= 300
    _good(cls_server)  # and the server keeps serving


def test_the_tagger_gets_the_same_checks(tagger_server):
    from components.serve.codec import V2Error, infer, post

    status, _ = post(tagger_server.infer_url, _v2(["a"], name="input-0"))
    assert status == 400
    with pytest.raises(V2Error, match="HTTP 400: 2000 texts in one request"):
        infer(tagger_server.infer_url, ["alice"] * 2000)
    _good(tagger_server)


def test_mlflow_scoring_endpoint_is_off(cls_server):
    from components.serve.codec import post

    status, _ = post(f"{cls_server.url}/invocations", json.dumps({"inputs": ["a"] * 10_000}).encode())
    assert 400 <= status < 500
    _good(cls_server)


# ---------------------------------------------------------------- model references and the CLI

@pytest.fixture(scope="module")
def registered(cls_pyfunc, tmp_path_factory) -> str:
    """A sqlite store where `tiny-student` v1 (the cls_pyfunc bundle, logged as export logs it) is
    the champion; returns its tracking URI."""
    import mlflow

    from components.export.sequence import pyfunc_kwargs
    from components.lib.publish.registry import pyfunc_code_paths

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    # An explicit artifact root: a sqlite store's default is ./mlruns in the working directory.
    exp = client.create_experiment("serve-test", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp):
            bundle = cls_pyfunc.parent.parent / "student"
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(bundle, pyfunc_code_paths(root / "code"), ["a b"], LABELS))
        mv = mlflow.register_model(info.model_uri, "tiny-student")
        client.set_registered_model_alias("tiny-student", "champion", mv.version)
    finally:
        mlflow.set_tracking_uri(None)
    return uri


def test_resolve_model_reads_export_dirs_and_the_registry(cls_pyfunc, registered, tmp_path):
    from components.lib.core.errors import UserError
    from components.serve.cli import resolve_model

    assert resolve_model(str(cls_pyfunc.parent), registered, tmp_path) == cls_pyfunc  # <export_dir> -> pyfunc/
    assert resolve_model(str(cls_pyfunc), registered, tmp_path) == cls_pyfunc
    local = resolve_model("models:/tiny-student@champion", registered, tmp_path / "dl")
    assert (local / "MLmodel").exists() and str(local).startswith(str(tmp_path))
    with pytest.raises(UserError, match="neither an MLflow model dir"):
        resolve_model(str(tmp_path / "nowhere"), registered, tmp_path)


def test_render_isvc_pins_the_champion_version(registered, capsys):
    import pipeline
    from tests import kserve_schema

    argv = ["serve", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", f"tracking.uri={registered}",
            "--render-isvc", "--model", "models:/tiny-student@champion", "--storage-uri", "s3://models/tiny/v1"]
    assert pipeline.main(argv) == 0
    (doc,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert doc["metadata"]["labels"]["distilflow.io/model-version"] == "1"
    assert doc["metadata"]["annotations"]["distilflow.io/model-uri"] == "models:/tiny-student/1"
    assert doc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v1"
    assert doc["spec"]["predictor"]["model"]["runtime"] == "distilflow-mlserver-lean"
    assert kserve_schema.errors(doc) == []
    assert pipeline.main([*argv, "--runtime", "mlflow"]) == 0
    (doc,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert doc["spec"]["predictor"]["model"]["runtime"] == "distilflow-mlserver"
    assert pipeline.main([*argv, "--isvc-protocol", "grpc-v2"]) == 0
    (doc,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert doc["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2" and kserve_schema.errors(doc) == []
    # A local artifact store is no storageUri: the user is told to copy the model and pass one.
    assert pipeline.main(argv[:-2]) == 2
    err = capsys.readouterr().err
    assert "which a cluster cannot read" in err and "--storage-uri" in err


# ---------------------------------------------------------------- manifests and image

def _run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_serving_manifests_are_current_and_valid(tmp_path):
    from components.serve import isvc
    from tests import kserve_schema

    name = "distilflow-bbc-news"  # configs/demo.yaml export.model_name
    assert yaml.safe_load((SERVING / "inferenceservice.yaml").read_text()) == isvc.render_isvc(
        name, isvc.DEFAULT_STORAGE.format(name=name)), "regenerate with components/serve/isvc.py render_isvc"
    assert yaml.safe_load((SERVING / "servingruntime.yaml").read_text()) == isvc.render_runtime(runtime="mlflow")
    assert yaml.safe_load((SERVING / "servingruntime-lean.yaml").read_text()) == isvc.render_runtime(runtime="lean")
    bin_dir = Path(sys.executable).parent
    rendered = _run(bin_dir / "kubectl", "kustomize", SERVING)
    assert rendered.returncode == 0, rendered.stderr
    all_docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    runtimes = {d["metadata"]["name"]: d for d in all_docs if d["kind"] == "ServingRuntime"}
    assert set(runtimes) == {isvc.runtime_name("lean"), isvc.runtime_name("mlflow")}
    for rt in runtimes.values():
        assert kserve_schema.errors(rt) == [], rt["metadata"]["name"]
    docs = {d["kind"]: d for d in all_docs if d["kind"] != "ServingRuntime"}
    assert set(docs) == {"Namespace", "ServiceAccount", "InferenceService"}
    assert kserve_schema.errors(docs["InferenceService"]) == []
    docs["ServingRuntime"] = runtimes[docs["InferenceService"]["spec"]["predictor"]["model"]["runtime"]]
    env = {e["name"]: e["value"] for e in docs["ServingRuntime"]["spec"]["containers"][0]["env"]}
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == "distilflow_lean.DistilflowLeanRuntime"
    (tmp_path / "core.yaml").write_text(yaml.safe_dump_all([docs["Namespace"], docs["ServiceAccount"]]))
    core = _run(bin_dir / "kubernetes-validate", "--strict", "--quiet", tmp_path / "core.yaml")
    assert core.returncode == 0, core.stdout + core.stderr
    lint = _run(bin_dir / "yamllint", "--strict", "-c", ROOT / ".yamllint", SERVING)
    assert lint.returncode == 0, lint.stdout
    model = docs["InferenceService"]["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "mlflow" and model["protocolVersion"] == "v2"
    assert model["runtime"] == docs["ServingRuntime"]["metadata"]["name"]
    assert model["resources"]["requests"] and model["resources"]["limits"]
    predictor = docs["InferenceService"]["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


def test_a_grpc_isvc_names_the_runtimes_grpc_port_as_h2c():
    """KServe routes HTTP/2 (gRPC) to the model's port named h2c; it must be the port MLServer's
    gRPC server listens on (MLSERVER_GRPC_PORT) in a runtime that declares grpc-v2."""
    from components.lib.core.errors import UserError
    from components.serve import isvc
    from tests import kserve_schema

    doc = isvc.render_isvc("m", "s3://b/m", runtime="lean", protocol="grpc-v2")
    assert kserve_schema.errors(doc) == []
    model = doc["spec"]["predictor"]["model"]
    runtime = isvc.render_runtime(runtime="lean")
    env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
    assert model["protocolVersion"] == "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert model["ports"] == [{"containerPort": int(env["MLSERVER_GRPC_PORT"]), "name": "h2c", "protocol": "TCP"}]
    rest = isvc.render_isvc("m", "s3://b/m")["spec"]["predictor"]["model"]
    assert "ports" not in rest and rest["protocolVersion"] == "v2" in runtime["spec"]["protocolVersions"]
    assert runtime["spec"]["containers"][0]["ports"][0]["containerPort"] == int(env["MLSERVER_HTTP_PORT"])
    with pytest.raises(UserError, match="--isvc-protocol 'grpc': expected one of v2, grpc-v2"):
        isvc.render_isvc("m", "s3://b/m", protocol="grpc")


def test_strict_schema_rejects_a_misspelt_isvc():
    from components.serve import isvc
    from tests import kserve_schema

    doc = isvc.render_isvc("m", "s3://b/m")
    doc["spec"]["predictor"]["model"]["storageURI"] = doc["spec"]["predictor"]["model"].pop("storageUri")
    doc["spec"]["predictor"]["minReplica"] = 2
    doc["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = ["2"]
    errs = kserve_schema.errors(doc)
    assert any("'storageURI' was unexpected" in e for e in errs)
    assert any("'minReplica' was unexpected" in e for e in errs)
    assert any(e.startswith("spec.predictor.model.resources.limits.cpu:") for e in errs)


def test_serving_dockerfile_passes_hadolint():
    proc = _run(Path(sys.executable).parent / "hadolint", "--config", ROOT / ".hadolint.yaml", "--no-color",
                ROOT / "docker" / "Dockerfile.serve")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "docker" / "Dockerfile.serve").read_text()
    assert "components/serve/requirements.txt" in text and "distilflow_runtime.py" in text
    assert "components/serve/lean_runtime.py /opt/distilflow/distilflow_lean.py" in text


# ---------------------------------------------------------------- stopping (last: it ends the module's server)

def test_stop_ends_the_server_and_all_its_children(cls_server):
    import psutil

    from components.serve.server import process_tree, stop

    tree = process_tree(cls_server.pid)
    assert len(tree) >= 2  # mlserver and its inference worker
    pids = stop(cls_server)
    assert set(pids) >= {p.pid for p in tree}
    assert not cls_server.alive()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
