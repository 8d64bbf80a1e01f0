"""The lean runtime (components/serve/lean_runtime.py) against the MLflow runtime (runtime.py), each
in a real MLServer from .venv-serve: the same V2 answers (labels, probabilities, entities, tags,
byte for byte but the request id) for the tiny classifier and tagger, the same as the pyfunc in
this process, over HTTP and over gRPC; adaptive batching splits merged answers back to the right
request; the MLflow runtime still refuses every bad request; a model that is no student bundle
fails to load with one line naming --runtime mlflow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.test_serve import BAD, SENTENCES, TEXTS, _save

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cls_pyfunc(tiny_student_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lean-cls")
    return _save(out / "pyfunc", tiny_student_dir, out, tagger=False)


@pytest.fixture(scope="module")
def tagger_pyfunc(tiny_tagger_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lean-tagger")
    return _save(out / "pyfunc", tiny_tagger_dir, out, tagger=True)


def _pair(model_dir: Path, name: str, **lean_kwargs):
    """A lean and an MLflow-runtime server for the same model dir."""
    from components.serve.server import start, stop

    servers = {}
    try:
        servers["lean"] = start(model_dir, name=name, runtime="lean", **lean_kwargs)
        servers["mlflow"] = start(model_dir, name=name, runtime="mlflow")
        yield servers
    finally:
        for server in servers.values():
            stop(server)


@pytest.fixture(scope="module")
def cls_servers(cls_pyfunc):
    yield from _pair(cls_pyfunc, "tiny-student")


@pytest.fixture(scope="module")
def tagger_servers(tagger_pyfunc):
    yield from _pair(tagger_pyfunc, "tiny-tagger")


def _raw(server, texts: list[str]) -> dict:
    from components.serve.codec import post, v2_request

    status, body = post(server.infer_url, json.dumps(v2_request(texts)).encode())
    assert status == 200, body[:300]
    answer = json.loads(body)
    answer.pop("id")
    return answer


@pytest.mark.parametrize("kind", ["classifier", "tagger"])
def test_lean_answers_are_the_mlflow_runtimes_and_the_pyfuncs(request, kind):
    import mlflow.pyfunc
    import numpy as np

    from components.serve.codec import decode_response

    servers = request.getfixturevalue("cls_servers" if kind == "classifier" else "tagger_servers")
    model_dir = request.getfixturevalue("cls_pyfunc" if kind == "classifier" else "tagger_pyfunc")
    texts = TEXTS if kind == "classifier" else SENTENCES
    lean, stock = _raw(servers["lean"], texts), _raw(servers["mlflow"], texts)
    assert lean == stock  # every output's name, shape, datatype, content type and value
    rows = decode_response(lean)
    want = mlflow.pyfunc.load_model(str(model_dir)).predict(texts)
    if kind == "classifier":
        assert [r["label"] for r in rows] == want["label"].tolist()
        for col in [c for c in want.columns if c != "label"]:
            np.testing.assert_allclose([r[col] for r in rows], want[col].to_numpy(), atol=1e-12)
    else:
        assert sum(len(r["entities"]) for r in rows) >= 3  # the tiny tagger finds spans
        assert [r["tags"] for r in rows] == [list(t) for t in want["tags"]]
        assert [r["entities"] for r in rows] == [list(e) for e in want["entities"]]


def test_lean_metadata_matches_the_mlflow_runtimes(cls_servers, tagger_servers):
    import urllib.request

    for servers in (cls_servers, tagger_servers):
        metas = {}
        for kind, s in servers.items():
            with urllib.request.urlopen(f"{s.url}/v2/models/{s.name}", timeout=10) as resp:
                metas[kind] = json.loads(resp.read())
        assert metas["lean"]["inputs"] == metas["mlflow"]["inputs"]
        assert [o["name"] for o in metas["lean"]["outputs"]] == [o["name"] for o in metas["mlflow"]["outputs"]]


GRPC_CLIENT = """
import json, sys
import grpc
from google.protobuf.json_format import MessageToDict
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub
target, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(texts)],
    contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]))
with grpc.insecure_channel(target) as channel:
    out = GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(model_name=model, inputs=[tensor]))
print(json.dumps([{"name": o.name, "shape": list(o.shape), "datatype": o.datatype,
                   "bytes": [b.decode() for b in o.contents.bytes_contents], "fp64": list(o.contents.fp64_contents)}
                  for o in out.outputs]))
"""


def _grpc(server, texts: list[str]) -> list[dict]:
    from components.serve.server import serve_venv

    proc = subprocess.run([str(serve_venv() / "bin" / "python"), "-c", GRPC_CLIENT, f"127.0.0.1:{server.ports['grpc']}",
                           server.name, json.dumps(texts)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_lean_over_grpc_answers_as_over_http(cls_servers):
    lean = _grpc(cls_servers["lean"], TEXTS)
    assert lean == _grpc(cls_servers["mlflow"], TEXTS)
    http = {o["name"]: o["data"] for o in _raw(cls_servers["lean"], TEXTS)["outputs"]}
    got = {o["name"]: o["bytes"] or o["fp64"] for o in lean}
    assert got == http and [o["shape"] for o in lean] == [[len(TEXTS), 1]] * len(lean)


def test_adaptive_batching_gives_each_request_its_own_answer(cls_pyfunc):
    """8 one-text requests at once, merged by MLServer (up to 8 within 0.5 s): each gets its own text's answer."""
    from components.serve.codec import infer
    from components.serve.server import start, stop

    texts = (TEXTS * 2)[:8]
    server = start(cls_pyfunc, name="tiny-batched", runtime="lean", batch=(8, 0.5))
    try:
        alone = [infer(server.infer_url, [t])[0] for t in texts]
        got: dict[int, list] = {}

        def send(i: int) -> None:
            got[i] = infer(server.infer_url, [texts[i]])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [got[i] for i in range(len(texts))] == [[a] for a in alone]
        log = server.log_tail(20000)
    finally:
        stop(server)
    assert "Adaptive Batching is enabled" in log  # MLServer did batch this model


@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "-"))
def test_the_mlflow_runtime_still_refuses_each_bad_request(cls_servers, case):
    from components.serve.codec import error_reason, infer, post

    body, content_type, status, reason = BAD[case]
    for kind, server in cls_servers.items():
        got, answer = post(server.infer_url, body, content_type)
        assert (got, reason in error_reason(answer)) == (status, True), f"{kind} {case}: HTTP {got}"
        assert len(infer(server.infer_url, ["still serving"])) == 1


def test_a_model_that_is_no_student_bundle_is_one_line_naming_the_mlflow_runtime(cls_pyfunc, tmp_path):
    from components.lib.core.errors import UserError
    from components.serve.server import start

    model = tmp_path / "no-bundle"
    shutil.copytree(cls_pyfunc, model)
    (model / "artifacts" / "student" / "pyfunc.json").unlink()
    with pytest.raises(UserError, match=r"could not load .*not a distilflow student pyfunc \(no python model with "
                                        r"a pyfunc.json bundle\): serve it with --runtime mlflow") as err:
        start(model, name="not-a-student", runtime="lean", timeout_s=120)
    assert "\n" not in str(err.value)
