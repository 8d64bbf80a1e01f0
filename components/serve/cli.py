"""`distilflow serve`: serve a registry reference or an export dir locally with MLServer (V2), or
print the InferenceService that serves it on KServe (--render-isvc)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig
from components.serve import isvc
from components.serve.server import start, stop

CHAMPION = "champion"  # the alias export moves (components/lib/publish/registry.py)
# What KServe's storage initializer downloads (a file: or mlflow-artifacts: location it cannot).
KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://", "hf://")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "file:")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH, an MLflow model dir or an "
                             "export dir (its pyfunc/); default models:/<export.model_name>@champion")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (gRPC and metrics get free ports)")
    parser.add_argument("--workers", type=int, default=1, help="MLServer inference worker processes")
    parser.add_argument("--name", default=None, help="model name in the V2 paths (default: the InferenceService name)")
    parser.add_argument("--render-isvc", action="store_true", help="print the KServe InferenceService YAML and exit")
    parser.add_argument("--storage-uri", default=None,
                        help="with --render-isvc: the exported model dir in object storage or a PVC "
                             "(default: where MLflow stored the version, when that is not a local path)")
    parser.add_argument("--namespace", default=isvc.NAMESPACE, help="with --render-isvc: the namespace")


def resolve_model(ref: str, tracking_uri: str, dst: Path) -> Path:
    """A local MLflow model dir for ref: as is, an export dir's pyfunc/, or downloaded from MLflow
    (what KServe's storage initializer does with storageUri)."""
    local = Path(ref)
    if not ref.startswith(MLFLOW_SCHEMES) or local.exists():
        for cand in (local, local / "pyfunc"):
            if (cand / "MLmodel").exists():
                return cand
        raise UserError(f"--model {ref}: neither an MLflow model dir nor an export dir with pyfunc/MLmodel")
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst)))
    except MlflowException as err:
        raise UserError(f"--model {ref}: {str(err).splitlines()[0]} (tracking {tracking_uri})") from None
    if not (path / "MLmodel").exists():
        raise UserError(f"--model {ref}: downloaded to {path}, but it holds no MLmodel file")
    return path


def render(cfg: PipelineConfig, args, tracking_uri: str) -> str:
    """The InferenceService YAML for args.model (a registry reference pins the version it points at)."""
    ref = args.model or f"models:/{cfg.export.model_name}@{CHAMPION}"
    name, version, location = cfg.export.model_name, None, None
    if ref.startswith("models:/"):
        name, version, location = isvc.champion_version(ref, tracking_uri)
    storage = args.storage_uri or (location if location and location.startswith(KSERVE_SCHEMES) else None)
    if storage is None:
        raise UserError(f"--model {ref} is stored at {location or ref}, which a cluster cannot read: copy the model "
                        "dir to object storage and pass --storage-uri (e.g. s3://bucket/path)")
    model_ref = f"models:/{name}/{version}" if version else ref
    return isvc.to_yaml(isvc.render_isvc(name, storage, version, model_ref, args.namespace))


def serve_command(cfg: PipelineConfig, args) -> None:
    from components.lib.tracking import runs as tracking

    uri = tracking.tracking_uri(cfg)
    if args.render_isvc:
        print(render(cfg, args, uri), end="")
        return None
    ref = args.model or f"models:/{cfg.export.model_name}@{CHAMPION}"
    name = args.name or isvc.isvc_name(cfg.export.model_name)
    with tempfile.TemporaryDirectory(prefix="distilflow-model-") as tmp:
        model_dir = resolve_model(ref, uri, Path(tmp))
        server = start(model_dir, name=name, host=args.host, port=args.port, workers=args.workers)
        print(f"serving {ref} ({model_dir}) as '{name}' at {server.infer_url} (pid {server.pid}); Ctrl-C stops it\n"
              f"  curl -s {server.infer_url} -H 'Content-Type: application/json' -d "
              "'{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"some text\"]}]}'",
              flush=True)
        try:
            server.proc.wait()
        finally:
            stop(server)
        if server.proc.returncode not in (0, -15):
            raise UserError(f"MLServer exited with code {server.proc.returncode}")
    return None
