"""The compiled pipeline: manifests/pipeline.yaml is current, and the spec carries the DAG and
the Kubernetes settings of cfg.kubernetes (parsed from the YAML, as a cluster would read it), the
code version in every step's cache key and the exit handler that closes the MLflow parent run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import pipeline
from components.lib.settings.config import DEFAULT_CONFIG, load_config
from components.lib.tracking import fingerprint
from components.runner.local import PUBLISH

ROOT = Path(__file__).resolve().parents[1]
GPU_EXECUTORS = ("exec-finetune-teacher", "exec-pseudo-label-transfer-set", "exec-distill-student",
                 "exec-distill-student-2")
CPU_EXECUTORS = ("exec-prepare-data", "exec-merge-pseudo-labels", "exec-evaluate", "exec-export")


def step_tasks(spec: dict) -> dict:
    """The steps' tasks: they run inside the exit handler's DAG (the finalizer sits at the root)."""
    return spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def mask_code_digest(text: str) -> str:
    return re.sub(r"(distilflow \S+ code )[0-9a-f]{16}", r"\1<digest>", text)


def compile_spec(tmp_path: Path, *overrides: str, image: str | None = None) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of configs/demo.yaml with --set overrides."""
    out = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG, list(overrides)), tmp_path / "p.yaml", image)
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return compile_spec(tmp_path_factory.mktemp("compile"))


def test_manifest_is_current(tmp_path):
    """Current up to the code digest: it changes with every edit of components/ or pipeline.py, and
    `distilflow compile`/`submit` stamp the real one; the committed file is a reference (README)."""
    fresh = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG), tmp_path / "pipeline.yaml")
    again = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG), tmp_path / "again.yaml")
    assert fresh.read_bytes() == again.read_bytes(), "compilation is not deterministic"
    committed = ROOT / "manifests" / "pipeline.yaml"
    assert committed.exists(), "manifests/pipeline.yaml is missing: run `make compile`"
    assert mask_code_digest(committed.read_text()) == mask_code_digest(fresh.read_text()), \
        "manifests/pipeline.yaml is stale: run `make compile`"


def test_code_version_is_in_every_steps_cache_key(tmp_path, monkeypatch):
    """KFP keys its cache on parameters, image and command (not env): a constant parameter per step."""
    def compiled(digest: str, name: str, image: str | None = None) -> tuple[str, dict]:
        monkeypatch.setattr(fingerprint, "code_digest", lambda root=None: digest)
        out = pipeline.compile_pipeline(load_config(DEFAULT_CONFIG), tmp_path / name, image)
        return out.read_text(), yaml.safe_load_all(out.read_text()).__next__()

    def cache_fields(spec: dict) -> dict:
        """Per step: the constant parameters the KFP cache key hashes, and the executor's image."""
        loop = next(t for t in step_tasks(spec).values() if "parameterIterator" in t)
        tasks = {**step_tasks(spec), **spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]}
        executors = spec["deploymentSpec"]["executors"]
        return {name: ({k: v["runtimeValue"]["constant"] for k, v in t["inputs"]["parameters"].items() if "runtimeValue" in v},
                       executors[spec["components"][t["componentRef"]["name"]]["executorLabel"]]["container"]["image"])
                for name, t in tasks.items() if "executorLabel" in spec["components"][t["componentRef"]["name"]]}

    text_a, spec_a = compiled("a" * 64, "a.yaml")
    text_a2, _ = compiled("a" * 64, "a2.yaml")
    text_b, spec_b = compiled("b" * 64, "b.yaml")
    assert text_a == text_a2  # same code, same bytes
    fields_a, fields_b = cache_fields(spec_a), cache_fields(spec_b)
    assert set(fields_a) >= {"prepare-data", "finetune-teacher", "pseudo-label-transfer-set", "merge-pseudo-labels",
                             "distill-student", "distill-student-2", "evaluate", "export"}
    version = fingerprint.project_version()
    for name, (params, image) in fields_a.items():
        assert params["code_version"] == f"distilflow {version} code {'a' * 16} image {image}", name
        assert fields_b[name][0]["code_version"] != params["code_version"], name  # changed code: a new key
    _, spec_img = compiled("a" * 64, "img.yaml", image="registry.local/df:2")
    assert all(p["code_version"].endswith("image registry.local/df:2") for p, _ in cache_fields(spec_img).values())
    assert "code_version" not in spec_a["root"]["dag"]["tasks"]["close-parent-run"]["inputs"]["parameters"]


def test_exit_handler_closes_the_parent_run_on_a_cluster(demo):
    spec, platform = demo
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "close-parent-run"}
    final = root["close-parent-run"]
    assert final["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert final["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert not final["cachingOptions"].get("enableCache")  # it must run every time
    # it finds the parent run the way the steps do: MLflow settings and the KFP run id
    env = platform["exec-close-parent-run"]
    assert env["configMapAsEnv"][0]["configMapName"] == "distilflow-mlflow"
    assert env["fieldPathAsEnv"] == [{"name": "KFP_RUN_ID", "fieldPath": pipeline.RUN_ID_FIELD}]
    assert PUBLISH not in yaml.safe_dump(spec)  # the kfp.local outputs task stays local


def test_dag_edges(demo):
    spec, _ = demo
    tasks = step_tasks(spec)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["prepare-data"] == set()
    assert deps["finetune-teacher"] == {"prepare-data"}
    loop = next(n for n, t in tasks.items() if "parameterIterator" in t)
    assert deps[loop] == {"prepare-data", "finetune-teacher"}
    assert deps["merge-pseudo-labels"] == {loop, "prepare-data"}
    # demo: soft+repr student + labels-only baseline, both from the merged pseudo labels
    names = {t["taskInfo"]["name"]: n for n, t in tasks.items()}
    student, baseline = names["distill-student (soft+repr)"], names["distill-student (labels-only)"]
    for task in (student, baseline):
        assert deps[task] == {"prepare-data", "finetune-teacher", "merge-pseudo-labels"}
    assert deps["evaluate"] == {"prepare-data", "finetune-teacher", student, baseline}
    assert deps["export"] >= {"evaluate", student} and baseline not in deps["export"]
    assert tasks["evaluate"]["inputs"]["artifacts"]["student_soft_repr"]["taskOutputArtifact"]["producerTask"] == student
    assert tasks["evaluate"]["inputs"]["artifacts"]["student_labels_only"]["taskOutputArtifact"]["producerTask"] == baseline


def test_parallel_for_over_shards_and_collected_merge(tmp_path):
    spec, _ = compile_spec(tmp_path, "transfer.num_shards=3", "kubernetes.parallelism=2")
    tasks = step_tasks(spec)
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["pseudo-label-transfer-set"]
    assert inner["pseudo-label-transfer-set"]["inputs"]["parameters"]["num_shards"]["runtimeValue"]["constant"] == 3
    # dsl.Collected: the merge reads the loop's output list
    merge_in = tasks["merge-pseudo-labels"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]
    assert merge_in["producerTask"] == loop["taskInfo"]["name"] or merge_in["producerTask"] in tasks
    assert spec["components"]["comp-merge-pseudo-labels"]["inputDefinitions"]["artifacts"]["shards"]["isArtifactList"]


def test_gpu_steps_get_accelerators_retries_and_cpu_steps_do_not(demo):
    spec, _ = demo
    executors = spec["deploymentSpec"]["executors"]
    for name in GPU_EXECUTORS:
        res = executors[name]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
    for name in CPU_EXECUTORS:
        assert "accelerator" not in executors[name]["container"]["resources"]
    for name in GPU_EXECUTORS + CPU_EXECUTORS:
        res = executors[name]["container"]["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("2", "8")
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("8Gi", "32Gi")
        assert executors[name]["container"]["image"] == "ghcr.io/distilflow/distilflow:0.1.0"
    tasks = step_tasks(spec)
    assert tasks["finetune-teacher"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["evaluate"] and "retryPolicy" not in tasks["prepare-data"]
    assert all(t["cachingOptions"].get("enableCache") for t in tasks.values() if "cachingOptions" in t)


def test_platform_spec_scheduling_secrets_pvc(demo):
    spec, platform = demo
    for name in GPU_EXECUTORS:
        assert platform[name]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert platform[name]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for name in CPU_EXECUTORS:
        assert "nodeSelector" not in platform[name] and "tolerations" not in platform[name]
    for name in GPU_EXECUTORS + CPU_EXECUTORS:
        p = platform[name]
        assert p["pvcMount"][0]["constant"] == "distilflow-hf-cache" and p["pvcMount"][0]["mountPath"] == pipeline.HF_HOME
        assert {"name": "HF_HOME", "value": pipeline.HF_HOME} in spec["deploymentSpec"]["executors"][name]["container"]["env"]
        assert p["configMapAsEnv"][0]["configMapName"] == "distilflow-mlflow"
        assert p["configMapAsEnv"][0]["keyToEnv"] == [{"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}]
        secret = p["secretAsEnv"][0]
        assert secret["secretName"] == "distilflow-mlflow-credentials"
        assert {"secretKey": "MLFLOW_TRACKING_PASSWORD", "envVar": "MLFLOW_TRACKING_PASSWORD"} in secret["keyToEnv"]
        assert p["fieldPathAsEnv"] == [{"name": "KFP_RUN_ID", "fieldPath": pipeline.RUN_ID_FIELD}]


def test_config_is_the_pipeline_parameter(demo):
    spec, _ = demo
    param = spec["root"]["inputDefinitions"]["parameters"]["config_json"]
    assert param["parameterType"] == "STRING"
    assert load_config(DEFAULT_CONFIG).model_dump(mode="json")["student"] == yaml.safe_load(param["defaultValue"])["student"]
    assert "DISTILFLOW_CACHE_SALT" not in yaml.safe_dump(spec)  # local-only, keeps the manifest stable


def test_ablation_fans_out_over_all_modes(tmp_path):
    spec, _ = compile_spec(tmp_path, "ablation=true")
    tasks = step_tasks(spec)
    students = {t["taskInfo"]["name"]: n for n, t in tasks.items() if n.startswith("distill-student")}
    assert sorted(students) == sorted(f"distill-student ({m})" for m in ("labels-only", "hard", "soft", "soft+repr"))
    assert set(tasks["evaluate"]["dependentTasks"]) >= set(students.values())
    assert set(tasks["evaluate"]["inputs"]["artifacts"]) >= {"student_labels_only", "student_hard", "student_soft", "student_soft_repr"}


def test_image_override_cpu_only_and_no_caching(tmp_path):
    spec, platform = compile_spec(tmp_path, "kubernetes.accelerator_count=0", "kubernetes.caching=false",
                                  "kubernetes.hf_cache_pvc=null", "kubernetes.mlflow_secret=null", image="registry.local/df:dev")
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.local/df:dev"}
    assert all("accelerator" not in e["container"]["resources"] for e in executors.values())
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in step_tasks(spec).values())
    assert all("pvcMount" not in p and "secretAsEnv" not in p and "nodeSelector" not in p for p in platform.values())
    assert yaml.safe_load(spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"])["kubernetes"]["image"] == "registry.local/df:dev"


def test_cli_compile_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "cli.yaml"
    assert pipeline.main(["compile", "-o", str(out), "--set", "transfer.num_shards=2"]) == 0
    assert "pseudo-label-shards" in out.read_text()
    assert pipeline.main(["compile", "-o", str(out), "--set", "student.hiddn=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "student.hiddn" in err
    assert pipeline.main(["compile", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
