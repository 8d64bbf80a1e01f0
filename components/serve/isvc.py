"""The KServe objects that serve a registered student: two namespaced ServingRuntimes on the
serving image, MLServer with distilflow's lean runtime (the student's bundle straight into ONNX
Runtime: components/serve/lean_runtime.py) or with its checked MLflow runtime (mlserver-mlflow:
runtime.py), and one InferenceService per model (`modelFormat: mlflow`, storageUri pointing at the
exported pyfunc dir, `runtime` naming one of the two). Both runtimes declare the V2 protocol over
REST and gRPC (MLServer serves both, MLSERVER_GRPC_PORT); an InferenceService uses one: `v2`
(REST, port 8080) or `grpc-v2`, for which KServe routes the model's port named h2c (9000).

manifests/serving/ holds both as rendered here for the demo's model; `distilflow serve
--render-isvc` renders the InferenceService for whatever version a registry alias points at.
Sizing comes from benchmarks/serve_load.py on the demo student (see SIZING).
"""

from __future__ import annotations

import re

from components.lib.core.errors import UserError

NAMESPACE = "distilflow-serving"
RUNTIME_NAME = "distilflow-mlserver"  # the MLflow runtime's ServingRuntime; the lean one adds -lean
RUNTIME_CLASSES = {"lean": "distilflow_lean.DistilflowLeanRuntime", "mlflow": "distilflow_runtime.DistilflowRuntime"}
SERVE_IMAGE = "ghcr.io/distilflow/distilflow-serve:0.1.0"
SERVICE_ACCOUNT = "distilflow-serving"
DEFAULT_STORAGE = "s3://distilflow-models/{name}/champion"
# From benchmarks/results/serve_load.json (the demo student, 2 MLServer workers with one thread
# each, 8 clients, one 2-core machine): the server's process tree peaked at 1,179 MiB (1,204 MiB
# with 16 texts a request) and used 1.8-1.9 cores at saturation (507 requests/s of one text).
# Requests: a core and the peak plus ~30%; limits: the two cores the two workers use and room
# for a 1,024-text batch. The HPA adds replicas past 70% of the requested CPU.
SIZING = {
    "requests": {"cpu": "1", "memory": "1536Mi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
    "min_replicas": 1,
    "max_replicas": 4,
    "scale_target": 70,
    "workers": 2,
}
LABELS = {"app.kubernetes.io/part-of": "distilflow", "app.kubernetes.io/component": "serving"}
HTTP_PORT, GRPC_PORT = 8080, 9000
PROTOCOLS = ("v2", "grpc-v2")  # KServe's protocolVersion values for the V2 (Open Inference) protocol


def isvc_name(model_name: str) -> str:
    """A registered model name as a DNS-1035 label (what KServe accepts as an InferenceService name)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:45].rstrip("-")  # KServe appends -predictor-<ns> to it
    if not name:
        raise UserError(f"model name {model_name!r}: no DNS-1035 label can be made from it")
    return name


def runtime_name(runtime: str = "lean") -> str:
    return RUNTIME_NAME + ("-lean" if runtime == "lean" else "")


def render_isvc(model_name: str, storage_uri: str, version: str | None = None, model_ref: str | None = None,
                namespace: str = NAMESPACE, sizing: dict | None = None, runtime: str = "lean",
                protocol: str = "v2") -> dict:
    """The InferenceService for one registered model version (or the alias, when version is None);
    protocol grpc-v2 exposes MLServer's gRPC port (h2c, the name KServe routes HTTP/2 to) instead of REST."""
    if protocol not in PROTOCOLS:
        raise UserError(f"--isvc-protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if not re.match(r"^[a-z][a-z0-9+.-]*://", storage_uri):
        raise UserError(f"--storage-uri {storage_uri!r}: expected a URI such as s3://bucket/path or pvc://claim/path")
    s = {**SIZING, **(sizing or {})}
    labels = {**LABELS, "distilflow.io/model": isvc_name(model_name)}
    if version:
        labels["distilflow.io/model-version"] = str(version)
    annotations = {
        # A Deployment + HPA (no Knative); "RawDeployment" in older KServe releases.
        "serving.kserve.io/deploymentMode": "Standard",
        "distilflow.io/registered-model": model_name,
    }
    if model_ref:
        annotations["distilflow.io/model-uri"] = model_ref
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": isvc_name(model_name), "namespace": namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {
            "predictor": {
                "serviceAccountName": SERVICE_ACCOUNT,
                "minReplicas": s["min_replicas"],
                "maxReplicas": s["max_replicas"],
                "scaleMetric": "cpu",
                "scaleTarget": s["scale_target"],
                "model": {
                    "modelFormat": {"name": "mlflow", "version": "2"},
                    "protocolVersion": protocol,
                    "runtime": runtime_name(runtime),
                    "storageUri": storage_uri,
                    **({"ports": [{"containerPort": GRPC_PORT, "name": "h2c", "protocol": "TCP"}]}
                       if protocol == "grpc-v2" else {}),
                    "resources": {"requests": dict(s["requests"]), "limits": dict(s["limits"])},
                },
            },
        },
    }


def render_runtime(namespace: str = NAMESPACE, image: str = SERVE_IMAGE, runtime: str = "mlflow") -> dict:
    """A ServingRuntime: kserve-mlserver's shape, with the serving image and one of distilflow's
    runtime classes (MLSERVER_MODEL_IMPLEMENTATION), both reading the exported MLflow model dir."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime_name(runtime), "namespace": namespace, "labels": dict(LABELS),
                     # KServe then sets MLSERVER_MODEL_NAME (the InferenceService name) and
                     # MLSERVER_MODEL_URI (/mnt/models, where storageUri is downloaded).
                     "annotations": {"serving.kserve.io/server-type": "mlserver"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": "8082", "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "mlflow", "version": "2", "autoSelect": False}],
            "protocolVersions": list(PROTOCOLS),
            "containers": [{
                "name": "kserve-container",
                "image": image,
                "env": [
                    {"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": RUNTIME_CLASSES[runtime]},
                    {"name": "MLSERVER_HTTP_PORT", "value": str(HTTP_PORT)},
                    {"name": "MLSERVER_GRPC_PORT", "value": str(GRPC_PORT)},
                    # one inference worker per core of the limit; one thread each (runtime.py)
                    {"name": "MLSERVER_PARALLEL_WORKERS", "value": str(SIZING["workers"])},
                    {"name": "MLSERVER_MODEL_EXTRA", "value": '{"max_texts": 1024, "max_chars": 65536, "threads": 1}'},
                ],
                # the REST port; an InferenceService with protocolVersion grpc-v2 names h2c (GRPC_PORT)
                "ports": [{"containerPort": HTTP_PORT, "name": "http1", "protocol": "TCP"}],
                "securityContext": {
                    "allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {"requests": dict(SIZING["requests"]), "limits": dict(SIZING["limits"])},
            }],
        },
    }


def champion_version(model_ref: str, tracking_uri: str) -> tuple[str, str, str | None]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, version, where MLflow stored it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    m = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))$", model_ref)
    if not m:
        raise UserError(f"--model {model_ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = m.groups()
    client = mlflow.MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as err:
        raise UserError(f"--model {model_ref}: {str(err).splitlines()[0]} (tracking {tracking_uri})") from None
    location = client.get_model_version_download_uri(name, mv.version)  # where its files are, not models:/m-...
    return name, str(mv.version), location


def to_yaml(*docs: dict) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)
