"""`distilflow submit` against a fake KFP REST API on 127.0.0.1 (an http.server in a thread that
answers the v2beta1 endpoints kfp.Client uses, checks credentials and namespaces the way a
multi-user Kubeflow does, and walks a run through its states), and its one-line errors.
tests/test_submit_auth.py holds the credential, namespace and --wait cases."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

import pipeline
from components.lib.settings.config import DEFAULT_CONFIG, load_config
from components.runner import cluster


class FakeKFP(BaseHTTPRequestHandler):
    """Records every request; `fail` maps a path prefix to an HTTP status to answer instead.

    auth: header -> value every request must carry (else 401, or a 302 to a login page when
    `login_redirect`); multi_user + namespaces: experiments calls for another namespace get 403;
    run_states: successive answers of GET /runs/{id}, each {"state": ..., "tasks": {name: state}}."""

    requests: list[tuple[str, str, dict | None]] = []
    fail: dict[str, int] = {}
    auth: dict[str, str] = {}
    login_redirect = False
    multi_user = False
    namespaces: set[str] = set()
    run_states: list[dict] = []
    seen_headers: list[dict[str, str]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((method, self.path, body))
        self.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
        path = urlparse(self.path).path
        for prefix, status in self.fail.items():
            if path.startswith(prefix):
                return self._reply(status, {"error_message": "boom", "code": 13})
        if any(self.headers.get(h) != v for h, v in self.auth.items()):
            if self.login_redirect:
                self.send_response(302)
                self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                self.end_headers()
                return None
            return self._reply(401, {"error_message": "Unauthenticated: missing or invalid token", "code": 16})
        namespace = (parse_qs(urlparse(self.path).query).get("namespace") or [None])[0] or (body or {}).get("namespace")
        if self.multi_user and path.startswith("/apis/v2beta1/experiments") and namespace not in self.namespaces:
            return self._reply(403, {"error_message": f"PermissionDenied: not authorized in namespace '{namespace}'", "code": 7})
        if method == "GET" and path == "/apis/v2beta1/healthz":
            return self._reply(200, {"multi_user": self.multi_user, "pipeline_store": "database"})
        if method == "GET" and path.startswith("/apis/v2beta1/runs/") and self.run_states:
            now = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
            tasks = [{"task_id": f"t-{name}", "display_name": name, "state": state} for name, state in now["tasks"].items()]
            return self._reply(200, {"run_id": path.rsplit("/", 1)[1], "state": now["state"],
                                     "run_details": {"task_details": tasks}, "error": now.get("error")})
        if method == "GET" and path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiments": [], "total_size": 0})
        if method == "POST" and path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiment_id": "exp-42", "display_name": body["display_name"]})
        if method == "POST" and path == "/apis/v2beta1/runs":
            return self._reply(200, {"run_id": "run-1234", "display_name": body["display_name"],
                                     "experiment_id": body["experiment_id"], "state": "PENDING"})
        return self._reply(404, {"error_message": f"no route {method} {path}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture()
def fake_kfp():
    FakeKFP.requests, FakeKFP.fail, FakeKFP.auth, FakeKFP.seen_headers = [], {}, {}, []
    FakeKFP.login_redirect, FakeKFP.multi_user, FakeKFP.namespaces, FakeKFP.run_states = False, False, set(), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKFP
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_posts_the_compiled_spec_and_config(fake_kfp, capsys):
    host, fake = fake_kfp
    code = pipeline.main(["submit", "--host", host, "--experiment", "nightly", "--run-name", "r1",
                          "--set", "student.hidden=64", "--set", "transfer.num_shards=2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "run id: run-1234" in out and f"url: {host}/#/runs/details/run-1234" in out

    posted = {(m, urlparse(p).path): b for m, p, b in fake.requests}
    assert ("GET", "/apis/v2beta1/healthz") in posted
    lookup = next(p for m, p, _ in fake.requests if m == "GET" and urlparse(p).path == "/apis/v2beta1/experiments"
                  and "filter" in parse_qs(urlparse(p).query))
    assert "nightly" in parse_qs(urlparse(lookup).query)["filter"][0]
    assert posted[("POST", "/apis/v2beta1/experiments")]["display_name"] == "nightly"

    run = posted[("POST", "/apis/v2beta1/runs")]
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-42"
    submitted = json.loads(run["runtime_config"]["parameters"]["config_json"])
    assert submitted["student"]["hidden"] == 64 and submitted["transfer"]["num_shards"] == 2
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "distilflow-demo"
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == [0, 1]
    assert tasks["finetune-teacher"]["dependentTasks"] == ["prepare-data"]
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-finetune-teacher"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}


def test_submit_image_override_reaches_every_executor(fake_kfp, capsys):
    host, fake = fake_kfp
    assert pipeline.main(["submit", "--host", host, "--image", "registry.local/df:test"]) == 0
    run = next(b for m, p, b in fake.requests if m == "POST" and urlparse(p).path == "/apis/v2beta1/runs")
    executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.local/df:test"}


def test_submit_nothing_listening_is_one_line(capsys):
    host = f"http://127.0.0.1:{free_port()}"
    assert pipeline.main(["submit", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "cannot reach the KFP API" in err and host in err


def test_submit_dropped_connection_is_one_try(capsys):
    """A listener that resets every connection (a dead pod behind a live port): submit fails after one
    connection, before kfp.Client (whose urllib3 retries would connect again and again)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted: list[int] = []

    def reset_all():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed by the test
                return
            accepted.append(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            conn.close()

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        assert pipeline.main(["submit", "--host", host]) == 2
    finally:
        srv.close()
        thread.join(timeout=5)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the KFP API" in err and host in err
    assert len(accepted) == 1


def test_submit_server_error_is_one_line(fake_kfp, capsys):
    host, fake = fake_kfp
    fake.fail = {"/apis/v2beta1/healthz": 500}
    assert pipeline.main(["submit", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "HTTP 500" in err and host in err


def test_submit_refused_run_is_one_line(fake_kfp, capsys):
    host, fake = fake_kfp
    fake.fail = {"/apis/v2beta1/runs": 403}
    assert pipeline.main(["submit", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "HTTP 403" in err


def test_submit_rejects_a_host_without_scheme(capsys):
    assert pipeline.main(["submit", "--host", "kfp.example:8080"]) == 2
    assert "http://" in capsys.readouterr().err


def test_submit_function_returns_run(fake_kfp):
    host, _ = fake_kfp
    result = cluster.submit(load_config(DEFAULT_CONFIG), host, pipeline.compile_pipeline, run_name="x")
    assert result == {"run_id": "run-1234", "url": f"{host}/#/runs/details/run-1234", "run_name": "x"}
