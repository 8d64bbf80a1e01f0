"""The distilflow DAG (Kubeflow Pipelines v2) and the `distilflow` CLI: run | compile | submit.

    prepare-data -> finetune-teacher -> pseudo-label-transfer-set (ParallelFor over shards)
      -> merge-pseudo-labels (Collected) -> distill-student (one task per mode) -> evaluate -> export

The config is the pipeline's one parameter (`config_json`); its compile-time value shapes the
DAG (shard count, student modes, Kubernetes settings) and is the parameter's default, so a
submitted run can change hyper-parameters but not the DAG's shape.

MLflow: one parent run per pipeline run, one nested run per step (tracking.step_run). Locally
the CLI creates the parent and hands its id to the steps through the environment; on a cluster
each pod reads its KFP run id from the `pipeline/runid` pod label and the first step creates the
parent run tagged with it (see components/kfp_components.py). Ids never travel as parameters,
so they do not break caching. The steps run inside a dsl.ExitHandler whose finalizer closes the
parent run FINISHED or FAILED whatever happens to them. Each step's `code_version` parameter
(version, code digest, image) puts the code into KFP's cache key. Submitting: components/runner/cluster.py.
"""

import argparse
import logging
import sys
import warnings
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.kfp_components import STUDENT_INPUTS, make_components
from components.lib.settings.cli import add_config_args, run_guarded
from components.lib.settings.config import KubernetesConfig, PipelineConfig, config_to_json, load_config
from components.runner import cluster
from components.serve.cli import add_serve_args, serve_command

HF_HOME = "/cache/huggingface"
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # set on every pod by the KFP API server
# Each key optional: the Secret holds only those it needs (MLflow auth; object storage for data and artifacts).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                      "AWS_DEFAULT_REGION", "HF_TOKEN")
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifests" / "pipeline.yaml"


def configure_task(task: dsl.PipelineTask, step: str, k8s: KubernetesConfig, local: bool, salt: str | None):
    """Resources, scheduling, retries, caching and env of one task, from cfg.kubernetes."""
    task.set_caching_options(k8s.caching)
    task.set_cpu_request(k8s.cpu_request).set_cpu_limit(k8s.cpu_limit)
    task.set_memory_request(k8s.memory_request).set_memory_limit(k8s.memory_limit)
    if step in k8s.gpu_steps and k8s.accelerator_count > 0:
        task.set_accelerator_type(k8s.accelerator_type).set_accelerator_limit(k8s.accelerator_count)
        for key, value in sorted(k8s.node_selector.items()):
            kubernetes.add_node_selector(task, key, value)
        for tol in k8s.tolerations:
            kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
        if k8s.retries:
            task.set_retry(k8s.retries, backoff_duration="60s", backoff_factor=2.0)
    if salt:  # local runs only: code + external inputs the kfp.local cache key cannot see
        task.set_env_variable("DISTILFLOW_CACHE_SALT", salt)
    if local:
        return task  # the rest names cluster objects; kfp.local would ignore it (or, HF_HOME, break it)
    if k8s.hf_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=k8s.hf_cache_pvc, mount_path=HF_HOME)
        task.set_env_variable("HF_HOME", HF_HOME)
    return tracking_env(task, k8s)


def tracking_env(task: dsl.PipelineTask, k8s: KubernetesConfig) -> dsl.PipelineTask:
    """MLflow settings and the KFP run id, from the ConfigMap/Secret in the pods' namespace."""
    kubernetes.use_config_map_as_env(task, k8s.mlflow_configmap, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    if k8s.mlflow_secret:  # optional: a server without auth needs no secret
        kubernetes.use_secret_as_env(task, k8s.mlflow_secret, {k: k for k in MLFLOW_SECRET_KEYS}, optional=True)
    kubernetes.use_field_path_as_env(task, "KFP_RUN_ID", RUN_ID_FIELD)
    return task


def build_pipeline(cfg: PipelineConfig, image: str | None = None, local: bool = False,
                   cache_salts: dict[str, str] | None = None):
    """The @dsl.pipeline for this config (shape from cfg, hyper-parameters from config_json)."""
    from components.lib.tracking.fingerprint import code_version

    image = image or cfg.kubernetes.image
    comps = make_components(image, code_version(image))
    k8s = cfg.kubernetes
    salts = cache_salts or {}
    default_json = config_to_json(cfg.with_overrides({"tracking.parent_run_id": None, "tracking.kfp_run_id": None}))
    shards = list(range(cfg.transfer.num_shards))
    modes = [m.value for m in cfg.student_modes]

    def setup(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
        return configure_task(task, step, k8s, local, salts.get(step))

    def steps(config_json: str) -> tuple:  # (evaluation, exported) output channels
        data = setup(comps.prepare_data(config_json=config_json), "prepare-data").outputs["data"]
        teacher = setup(comps.finetune_teacher(config_json=config_json, data=data), "finetune-teacher").outputs["teacher"]
        with dsl.ParallelFor(items=shards, parallelism=k8s.parallelism, name="pseudo-label-shards") as shard_index:
            shard = setup(comps.pseudo_label_transfer_set(
                config_json=config_json, shard_index=shard_index, num_shards=len(shards), data=data, teacher=teacher,
            ), "pseudo-label-transfer-set")
        pseudo = setup(comps.merge_pseudo_labels(
            config_json=config_json, data=data, shards=dsl.Collected(shard.outputs["shard"]),
        ), "merge-pseudo-labels").outputs["pseudo"]
        students = {}
        for mode in modes:
            task = setup(comps.distill_student(config_json=config_json, mode=mode, data=data, teacher=teacher,
                                               pseudo=pseudo), "distill-student")
            students[mode] = task.set_display_name(f"distill-student ({mode})").outputs["student"]
        evaluation = setup(comps.evaluate(
            config_json=config_json, data=data, teacher=teacher, **{STUDENT_INPUTS[m]: s for m, s in students.items()},
        ), "evaluate").outputs["evaluation"]
        exported = setup(comps.export(
            config_json=config_json, data=data, teacher=teacher, student=students[cfg.student.mode.value],
            evaluation=evaluation,
        ), "export").outputs["exported"]
        return evaluation, exported

    @dsl.pipeline(name=cfg.name, description="Distil a fine-tuned Transformer encoder into a BiLSTM student.")
    def distilflow(config_json: str = default_json):
        finalizer = comps.close_parent_run(config_json=config_json).set_caching_options(False)
        finalizer.set_cpu_request("100m").set_cpu_limit("1").set_memory_request("512Mi").set_memory_limit("2Gi")
        if not local:
            tracking_env(finalizer, k8s)
        # kfp forbids pipeline outputs from inside an ExitHandler, so locally a small uncached task
        # writes where the (fresh or cached) evaluate and export artifacts are for run_local.
        with dsl.ExitHandler(finalizer):  # the finalizer closes the MLflow parent run, whatever happens
            evaluation, exported = steps(config_json)
            if local:
                comps.publish_outputs(evaluation=evaluation, exported=exported).set_caching_options(False)

    return distilflow


# ---------------------------------------------------------------- compile

def compile_pipeline(cfg: PipelineConfig, out: Path, image: str | None = None) -> Path:
    """Write the pipeline spec YAML (deterministic: same config and code, same bytes)."""
    if image:
        cfg = cfg.with_overrides({"kubernetes.image": image})
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.Compiler().compile(build_pipeline(cfg), package_path=str(out))
    return out


# ---------------------------------------------------------------- local run

def run_local(cfg: PipelineConfig, runner: str = "subprocess", verbose: bool = True) -> dict:
    """The whole DAG under kfp.local (components/runner/local.py); returns what it wrote."""
    from components.runner import local

    return local.run_local(cfg, build_pipeline, runner, verbose)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distilflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the whole DAG locally (kfp.local), print a summary")
    add_config_args(p_run)
    p_run.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                       help="subprocess (this venv) or docker (the image, via DOCKER_HOST)")
    p_run.add_argument("-v", "--verbose", action="store_true",
                       help="show kfp.local's whole log (every step's output) instead of one line per step; "
                            "it is always in <work_dir>/kfp/<run id>.log")
    p_compile = sub.add_parser("compile", help="compile the DAG to a KFP pipeline spec YAML")
    add_config_args(p_compile)
    p_compile.add_argument("-o", "--output", default=str(DEFAULT_MANIFEST), help="output YAML path")
    p_compile.add_argument("--image", default=None, help="image for every step (default kubernetes.image)")
    p_submit = sub.add_parser("submit", help="start a run on a KFP cluster (components/runner/cluster.py)")
    add_config_args(p_submit)
    p_submit.add_argument("--host", required=True,
                          help="KFP API endpoint: http://localhost:8080 (port-forward) or https://KUBEFLOW/pipeline")
    p_submit.add_argument("--namespace", default=None, help="multi-user Kubeflow: your profile namespace")
    p_submit.add_argument("--token-file", default=None, help="bearer token file (default $KF_PIPELINES_SA_TOKEN_PATH)")
    p_submit.add_argument("--cookie-file", default=None, help="auth proxy NAME=VALUE session cookie file (or $DISTILFLOW_KFP_COOKIE)")
    p_submit.add_argument("--experiment", default=None, help="KFP experiment (default tracking.experiment)")
    p_submit.add_argument("--run-name", default=None, help="run display name")
    p_submit.add_argument("--image", default=None, help="image for every step (default kubernetes.image)")
    p_submit.add_argument("--allow-local-paths", action="store_true",
                          help="submit inputs that are local paths (only if they are on a volume the pods mount)")
    p_submit.add_argument("--wait", action="store_true", help="follow the run's task states; exit 0 if it succeeds, else 1")
    p_submit.add_argument("--timeout", type=float, default=None, metavar="S", help="--wait: give up after S seconds (exit 1)")
    p_submit.add_argument("--poll", type=float, default=10.0, metavar="S", help="--wait: seconds between polls")
    p_serve = sub.add_parser("serve", help="serve a model with MLServer (V2), or print its KServe InferenceService")
    add_config_args(p_serve)
    add_serve_args(p_serve)
    args = parser.parse_args(argv)
    exit_code = 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def dispatch():
        nonlocal exit_code
        cfg = load_config(args.config, args.overrides)
        if args.command == "run":
            run_local(cfg, args.runner, verbose=args.verbose)
            return None
        if args.command == "compile":
            out = compile_pipeline(cfg, Path(args.output), args.image)
            print(f"wrote {out}")
            return None
        if args.command == "serve":
            return serve_command(cfg, args)
        exit_code = cluster.submit_command(cfg, args, compile_pipeline)
        return None

    return run_guarded(dispatch) or exit_code


if __name__ == "__main__":
    sys.exit(main())
