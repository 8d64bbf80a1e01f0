"""The kfp faces of the steps: lightweight components whose bodies call `components.<step>.run`.

Each body rebuilds the PipelineConfig from the `config_json` parameter and maps its artifacts
onto the sections' output_dir keys, so a step reads and writes exactly where kfp (locally) or
the KFP launcher (on a cluster) put its artifacts. The functions below are plain Python; the
factory `make_components(image)` turns them into components, because `base_image` is fixed when
a component is created and the image comes from the config or `distilflow compile --image`.

Every step also takes `code_version` (project version, digest of this package's code, image):
KFP keys its cache on a task's parameters, image and command, not on the code inside the image,
so this constant parameter is what makes a rebuilt image under the same tag re-run the steps.
The bodies ignore it.

Per-run values never travel as parameters: a parameter is part of every cache key, so a new
MLflow parent run id would defeat caching. They come from the environment instead:
- `distilflow run` creates the parent run and exports DISTILFLOW_PARENT_RUN_ID and
  DISTILFLOW_KFP_RUN_ID (the subprocess / container inherits them);
- on a cluster each pod gets KFP_RUN_ID from its `pipeline/runid` label (downward API, set in
  pipeline.py), and the first step to run finds or creates the parent run tagged with that id.
`close_parent_run` is the pipeline's exit handler: it runs whatever happened to the steps and
closes the parent run FINISHED, FAILED or KILLED with the run's final state.
"""

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import dsl
from kfp.dsl import (  # noqa: F401 (annotations)
    Artifact,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    PipelineTaskFinalStatus,
)

STUDENT_INPUTS = {  # evaluate's optional inputs, one per student mode
    "labels-only": "student_labels_only",
    "hard": "student_hard",
    "soft": "student_soft",
    "soft+repr": "student_soft_repr",
}


# ---------------------------------------------------------------- helpers the bodies import

def step_config(config_json: str, dirs: dict[str, Any]):
    """The step's PipelineConfig: the JSON parameter + artifact dirs + this run's tracking ids."""
    from components.lib.settings.config import config_from_json
    from components.lib.tracking import runs as tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    cfg = config_from_json(config_json)
    overrides = dict(dirs)
    kfp_run_id = os.environ.get("DISTILFLOW_KFP_RUN_ID") or os.environ.get("KFP_RUN_ID")
    if kfp_run_id and not cfg.tracking.kfp_run_id:
        overrides["tracking.kfp_run_id"] = kfp_run_id
    if cfg.tracking.enabled and not cfg.tracking.parent_run_id:
        parent = os.environ.get("DISTILFLOW_PARENT_RUN_ID")
        if not parent and kfp_run_id:  # on a cluster: one parent run per KFP run, made by whoever is first
            parent = tracking.find_or_start_parent_run(cfg.with_overrides(overrides), kfp_run_id)
        if parent:
            overrides["tracking.parent_run_id"] = parent
    return cfg.with_overrides(overrides)


def student_dir_in(artifact_path: str, mode: str) -> Path:
    """Where distill-student put mode `mode` inside its artifact (student.output_dir/<mode>)."""
    return Path(artifact_path) / mode.replace("+", "_")


def record(metrics, result: Any, prefix: str = "") -> dict[str, float]:
    """Log the result's numeric fields into Output[Metrics], and write them to its path too:
    kfp.local treats an artifact whose file is missing as a cache miss."""
    from components.lib.settings.cli import to_jsonable

    values: dict[str, float] = {}

    def walk(obj: Any, name: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{name}.{key}" if name else str(key))
        elif isinstance(obj, int | float) and not isinstance(obj, bool) and obj == obj:  # drop NaN
            values[name] = float(obj)

    walk(to_jsonable(result), prefix)
    for key, value in sorted(values.items()):
        metrics.log_metric(key, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    return values


def finish_parent_run(config_json: str, state: str, error: str | None = None) -> str | None:
    """Close this KFP run's parent run: SUCCEEDED -> FINISHED, CANCELED -> KILLED, else FAILED.

    Locally the CLI made the parent (DISTILFLOW_PARENT_RUN_ID); on a cluster it is the run tagged
    with KFP_RUN_ID, created here when every step was a cache hit, so each KFP run has one."""
    import mlflow

    from components.lib.settings.config import config_from_json
    from components.lib.tracking import runs as tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    cfg = config_from_json(config_json)
    if not cfg.tracking.enabled:
        return None
    kfp_run_id = os.environ.get("DISTILFLOW_KFP_RUN_ID") or os.environ.get("KFP_RUN_ID")
    parent = cfg.tracking.parent_run_id or os.environ.get("DISTILFLOW_PARENT_RUN_ID")
    if not parent and kfp_run_id:
        parent = tracking.find_or_start_parent_run(cfg, kfp_run_id)
    if not parent:
        logging.warning("no MLflow parent run to close (no DISTILFLOW_PARENT_RUN_ID or KFP_RUN_ID)")
        return None
    upper = (state or "").upper()
    final = "FINISHED" if upper == "SUCCEEDED" else "KILLED" if upper.startswith("CANCEL") else "FAILED"
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    client.set_tag(parent, "distilflow.final_state", upper or "UNKNOWN")
    if error and final != "FINISHED":
        client.set_tag(parent, "distilflow.error", str(error)[:5000])
    client.set_terminated(parent, final)
    logging.info("MLflow parent run %s closed %s (pipeline state %s)", parent, final, upper)
    return final


# ---------------------------------------------------------------- the component functions

def prepare_data(config_json: str, code_version: str, data: Output[Dataset], metrics: Output[Metrics]):
    """Ingest, clean and split the source into train/dev/test/transfer Parquet."""
    from components import prepare_data as step
    from components.kfp_components import record, step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {"data.output_dir": data.path})
        record(metrics, step.run(cfg))


def finetune_teacher(config_json: str, code_version: str, data: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Fine-tune the encoder on the labeled split; a Hugging Face model dir."""
    from components import finetune_teacher as step
    from components.kfp_components import record, step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {"data.output_dir": data.path, "teacher.output_dir": teacher.path})
        record(metrics, step.run(cfg))


def pseudo_label_transfer_set(config_json: str, code_version: str, shard_index: int, num_shards: int, data: Input[Dataset],
                              teacher: Input[Model], shard: Output[Dataset]):
    """Label one row-range shard of the transfer set with the teacher (hard labels, logits, repr)."""
    from components import pseudo_label as step
    from components.kfp_components import step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {
            "data.output_dir": data.path, "teacher.output_dir": teacher.path, "transfer.output_dir": shard.path,
            "transfer.shard_index": shard_index, "transfer.num_shards": num_shards,
        })
        step.run(cfg)


def merge_pseudo_labels(config_json: str, code_version: str, data: Input[Dataset], shards: Input[list[Dataset]],
                        pseudo: Output[Dataset], metrics: Output[Metrics]):
    """Merge the shards into one pseudo-labeled set; fails if any transfer id is missing or repeated."""
    from pathlib import Path

    from components import pseudo_label as step
    from components.kfp_components import record, step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {"data.output_dir": data.path, "transfer.output_dir": pseudo.path})
        record(metrics, step.merge_run(cfg, [Path(s.path) for s in shards]))


def distill_student(config_json: str, code_version: str, mode: str, data: Input[Dataset], teacher: Input[Model],
                    pseudo: Input[Dataset], student: Output[Model], metrics: Output[Metrics]):
    """Train one BiLSTM student (representation -> logits -> labels, gradual unfreezing)."""
    from components import distill_student as step
    from components.kfp_components import record, step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {
            "data.output_dir": data.path, "teacher.output_dir": teacher.path, "transfer.output_dir": pseudo.path,
            "student.output_dir": student.path, "student.mode": mode,
        })
        record(metrics, step.run(cfg))


def evaluate(config_json: str, code_version: str, data: Input[Dataset], teacher: Input[Model], evaluation: Output[Artifact],
             report: Output[Markdown], metrics: Output[Metrics],
             student_labels_only: Input[Model] = None, student_hard: Input[Model] = None,
             student_soft: Input[Model] = None, student_soft_repr: Input[Model] = None):
    """Teacher vs students on the test split: report.json, report.md, plots."""
    import json
    import shutil

    from components import evaluate as step
    from components.kfp_components import record, step_config, student_dir_in
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        given = {"labels-only": student_labels_only, "hard": student_hard, "soft": student_soft,
                 "soft+repr": student_soft_repr}
        student_dirs = {mode: student_dir_in(art.path, mode) for mode, art in given.items() if art is not None}
        cfg = step_config(config_json, {
            "data.output_dir": data.path, "teacher.output_dir": teacher.path, "evaluate.output_dir": evaluation.path,
        })
        result = step.run(cfg, student_dirs=student_dirs)
        shutil.copyfile(cfg.eval_dir / "report.md", report.path)
        report_json = json.loads((cfg.eval_dir / "report.json").read_text())
        keys = ("teacher", "student", "baseline", "tfidf", "retention", "params", "compression", "throughput", "speedup")
        record(metrics, {k: report_json[k] for k in keys if k in report_json} or result)


def export(config_json: str, code_version: str, data: Input[Dataset], teacher: Input[Model], student: Input[Model],
           evaluation: Input[Artifact], exported: Output[Model], metrics: Output[Metrics]):
    """ONNX (+ int8) with a parity check, the MLflow pyfunc, registration and the champion gate."""
    from components import export as step
    from components.kfp_components import record, step_config
    from components.lib.settings.cli import step_errors

    with step_errors():  # a user's fault: one `error:` line and exit 2, not a traceback
        cfg = step_config(config_json, {
            "data.output_dir": data.path, "teacher.output_dir": teacher.path, "student.output_dir": student.path,
            "evaluate.output_dir": evaluation.path, "export.output_dir": exported.path,
        })
        record(metrics, step.run(cfg))


def publish_outputs(evaluation: Input[Artifact], exported: Input[Model]):
    """kfp.local only: write where evaluate's and export's outputs are (fresh or cached) to
    $DISTILFLOW_OUTPUTS_FILE, because kfp forbids pipeline outputs from inside an ExitHandler."""
    import json
    import os
    from pathlib import Path

    out = Path(os.environ["DISTILFLOW_OUTPUTS_FILE"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"evaluation": evaluation.path, "exported": exported.path}) + "\n")


def close_parent_run(config_json: str, status: PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final state, whatever it is."""
    from components.kfp_components import finish_parent_run

    finish_parent_run(config_json, status.state, status.error_message)


# ---------------------------------------------------------------- the factory

@dataclass(frozen=True)
class Components:
    prepare_data: Any
    finetune_teacher: Any
    pseudo_label_transfer_set: Any
    merge_pseudo_labels: Any
    distill_student: Any
    evaluate: Any
    export: Any
    close_parent_run: Any
    publish_outputs: Any


def make_components(image: str, code_version: str = "") -> Components:
    """Every step as a component running in `image` (which must hold this package and kfp), its
    `code_version` parameter bound (see the module docstring); the exit handler takes none."""
    def wrap(fn):
        comp = dsl.component(fn, base_image=image, install_kfp_package=False)
        return functools.partial(comp, code_version=code_version)

    return Components(
        prepare_data=wrap(prepare_data),
        finetune_teacher=wrap(finetune_teacher),
        pseudo_label_transfer_set=wrap(pseudo_label_transfer_set),
        merge_pseudo_labels=wrap(merge_pseudo_labels),
        distill_student=wrap(distill_student),
        evaluate=wrap(evaluate),
        export=wrap(export),
        close_parent_run=dsl.component(close_parent_run, base_image=image, install_kfp_package=False),
        publish_outputs=dsl.component(publish_outputs, base_image=image, install_kfp_package=False),
    )
