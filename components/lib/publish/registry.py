"""Publishing an exported student, both tasks: the pyfunc bundle and the code it ships, the
pinned requirements, reading evaluate's report, and registration in the MLflow model registry
with the `champion` alias moved only when the quality gate holds.

The gate reads dev scores only (report.json's `dev` block): test never decides. Publishing is
whole and idempotent: the export dir is complete before anything is registered, and a version
carries the digest of what it serves (`distilflow.content_digest`) and the pipeline run that
made it (`distilflow.source_run`), so a rerun of that run finds its version instead of
registering another, and re-applies the gate (repairing an alias a failure left unset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.lib.contracts import data
from components.lib.core.env import pip_requirements as installed_pins
from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
DIGEST_TAG, SOURCE_TAG = "distilflow.content_digest", "distilflow.source_run"
# What the pyfunc imports at serving time (numpy, pandas, onnxruntime, tokenizers; no torch).
PYFUNC_PACKAGES = ("mlflow", "onnxruntime", "transformers", "tokenizers", "numpy", "pandas")
CLASSIFIER_MODULES = ("publish/pyfunc.py", "core/truncation.py")  # what the classifier pyfunc imports, shipped with it


def pyfunc_bundle(student_dir: Path, onnx_path: Path, student, out: Path, extra: dict | None = None) -> Path:
    """The pyfunc's one artifact folder: tokenizer files, vocab/config JSON, the ONNX graph, pyfunc.json
    (`extra` adds keys to pyfunc.json, e.g. the token tagger's pre-tokeniser)."""
    from components.lib.publish.pyfunc import PYFUNC_CONFIG

    out.mkdir(parents=True)
    for f in student_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "metrics.json":
            shutil.copy2(f, out / f.name)
    shutil.copy2(onnx_path, out / onnx_path.name)
    conf = {"onnx": onnx_path.name, "label_names": student.label_names, "max_length": student.max_length,
            "mode": student.mode, "batch_size": 64, **(extra or {})}
    (out / PYFUNC_CONFIG).write_text(json.dumps(conf, indent=2) + "\n")
    return out


def pyfunc_code_paths(out: Path, modules: tuple[str, ...] = CLASSIFIER_MODULES) -> list[str]:
    """A minimal `components` package holding only these lib/ modules, by their path under lib/
    (publish/pyfunc.py and core/truncation.py, plus core/tokens.py and core/errors.py for the token
    tagger), so the model loads without the repo."""
    lib = Path(__file__).resolve().parents[1]
    pkg = out / "components"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name in modules:
        dst = pkg / "lib" / name  # lib/<layer>/<module>.py: one level of packages
        dst.parent.mkdir(parents=True, exist_ok=True)
        for folder in (pkg / "lib", dst.parent):
            (folder / "__init__.py").touch()
        shutil.copy2(lib / name, dst)
    return [str(pkg)]


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Pins of what the pyfunc imports, plus `extra` (e.g. the tagger's word segmenter)."""
    return installed_pins(PYFUNC_PACKAGES + extra)


def read_report(cfg: PipelineConfig) -> dict:
    path = cfg.eval_dir / "report.json"
    if not path.exists():
        raise UserError(f"{path}: not found (run the evaluate step first)")
    rep = json.loads(path.read_text())
    for key in ("student", "retention", "dev"):
        if key not in rep:
            raise UserError(f"{path}: key '{key}' missing (re-run evaluate: export decides on its dev scores)")
    return rep


# ---------------------------------------------------------------- a whole, reusable export dir

def content_digest(pyfunc_dir: Path) -> str:
    """What a registered version serves: the bundle (ONNX, tokenizer, pyfunc.json) and the code it
    ships; not MLmodel, which holds a creation time and a fresh uuid."""
    return data.sha256_dir(pyfunc_dir, ("artifacts", "code"))


def inputs_digest(cfg: PipelineConfig, student_dir: Path) -> str:
    """Everything an export dir is built from: the student, evaluate's report, the dev split, export.*."""
    h = hashlib.sha256(data.sha256_dir(student_dir).encode())
    for f in (cfg.eval_dir / "report.json", cfg.data_dir / "dev.parquet"):
        h.update(data.sha256_file(f).encode())
    # not what only registration reads (the name, the gate's bar, whether to register)
    ec = cfg.export.model_dump(mode="json", exclude={"output_dir", "num_threads", "model_name", "min_retention", "register_model"})
    h.update(json.dumps(ec, sort_keys=True).encode())
    return h.hexdigest()


def reusable_export(export_dir: Path, inputs: str) -> dict | None:
    """The summary of a complete export dir built from the same inputs (a rerun after a failure in
    registration), else None."""
    path = export_dir / "export_summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if summary.get("inputs_digest") != inputs or summary.get("content_digest") != content_digest(export_dir / "pyfunc"):
        return None
    log.info("%s: complete from an earlier run with the same inputs; reusing it", export_dir)
    return summary


def build_or_reuse(export_dir: Path, inputs: str, build: Callable[[Path], dict], fields: dict) -> dict:
    """The export dir, whole: reused when complete from the same inputs, else build(tmp) writes it
    into a temp dir that replaces export_dir with export_summary.json (build's summary + fields +
    digests, registration fields empty) once complete. Registration comes after (register_export)."""
    summary = reusable_export(export_dir, inputs)
    if summary is None:
        with data.atomic_dir(export_dir) as out:
            summary = {**build(out), **fields, "decision_split": "dev", "inputs_digest": inputs,
                       "content_digest": content_digest(out / "pyfunc"), "model_uri": None, "registered_model": None,
                       "registered_version": None, "champion": False, "gate_reason": None}
            data.write_json(out / "export_summary.json", summary)
    return summary


# ---------------------------------------------------------------- the gate and the registry

def gate(score: float, retention: float, min_retention: float, champion_score: float | None,
         champion_version: str | None, metric: str = "accuracy", baseline: float | None = None,
         tfidf: float | None = None) -> str | None:
    """None when the version may become champion, else the reason it may not. Every score is a dev
    score (`metric`: accuracy, or entity f1 for token classification); baseline is the labels-only
    student's, tfidf the TF-IDF + logistic regression model's."""
    reasons = []
    if retention < min_retention:
        reasons.append(f"dev retention {retention:.4f} < export.min_retention {min_retention:.4f}")
    if baseline is not None and baseline > score + 1e-12:
        reasons.append(f"the labels-only baseline's dev {metric} {baseline:.4f} beats the distilled student's {score:.4f}")
    if tfidf is not None and tfidf > score + 1e-12:
        reasons.append(f"the TF-IDF + logistic regression baseline's dev {metric} {tfidf:.4f} beats the distilled "
                       f"student's {score:.4f}")
    if champion_score is not None and score < champion_score - 1e-9:  # a float round trip is no regression
        reasons.append(f"dev {metric} {score:.4f} below champion v{champion_version} ({champion_score:.4f})")
    return "; ".join(reasons) or None


def current_champion(client, name: str, metric: str = "accuracy") -> tuple[str | None, float | None]:
    """(version, dev score under `metric`) of the alias holder, or (None, None) when there is none
    yet; the score is None for a champion with no dev score (registered by hand or before dev gating)."""
    from mlflow.exceptions import MlflowException

    key = f"dev_{metric}"
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    if key in mv.tags:
        return str(mv.version), float(mv.tags[key])
    if mv.run_id:  # fall back to the run's logged dev score
        metrics = client.get_run(mv.run_id).data.metrics
        if key in metrics:
            return str(mv.version), float(metrics[key])
    log.warning("champion v%s of %s has no %s: the new version is not compared with it", mv.version, name, key)
    return str(mv.version), None


def source_run(cfg: PipelineConfig) -> str:
    """The pipeline run an export belongs to: the KFP run, else the MLflow parent run, else '' (a
    standalone step: versions are then matched on content alone)."""
    return cfg.tracking.kfp_run_id or cfg.tracking.parent_run_id or ""


def find_version(client, name: str, digest: str, source: str):
    """The oldest version of `name` registered from this content by this pipeline run, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{DIGEST_TAG}` = '{digest}'")
    except MlflowException:
        return None
    same = [v for v in found if v.tags.get(SOURCE_TAG, "") == source]
    return min(same, key=lambda v: int(v.version)) if same else None


def publish(cfg: PipelineConfig, log_model: Callable[[], Any], tags: dict[str, str], dev: dict,
            digest: str) -> tuple[str | None, str, bool, str]:
    """Register the export (or find the version this run registered before) and gate it on `dev`
    (report.json's dev block); log_model() logs the model to the step's run and returns mlflow's
    ModelInfo. -> (model_uri, version, champion?, reason)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri(cfg)
    # The registry of the configured store, never the process-wide one an earlier MLflow call set
    # (mlflow.set_registry_uri also exports MLFLOW_REGISTRY_URI): so this client, not mlflow.register_model.
    client = mlflow.MlflowClient(uri, uri)
    name, metric = cfg.export.model_name, dev["metric"]
    source = source_run(cfg)
    mv = find_version(client, name, digest, source)
    champ_version, champ_score = current_champion(client, name, metric)
    if mv is not None:
        model_uri, version = mv.source, str(mv.version)
        decided = mv.tags.get("distilflow.gate")
        log.info("%s v%s was registered from this content by this run earlier: not registering it again", name, version)
        if decided is not None:  # the gate ran then: report its decision, do not redo it
            reason = None if decided == "passed" else decided.removeprefix("failed: ")
            return model_uri, version, champ_version == version, reason
        # registered, then a failure before the gate: the gate runs now (repair)
    else:
        info = log_model()
        model_uri = info.model_uri
        try:
            client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = client.create_model_version(name, model_uri, run_id=info.run_id, model_id=info.model_id,
                                         tags={**tags, f"dev_{metric}": repr(dev["student"]),
                                               "dev_retention": repr(dev["retention"]), DIGEST_TAG: digest, SOURCE_TAG: source})
        version = str(mv.version)
    reason = gate(dev["student"], dev["retention"], cfg.export.min_retention, champ_score, champ_version, metric,
                  dev.get("baseline"), dev.get("tfidf"))
    if reason is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "distilflow.gate", "passed")
        log.info("registered %s v%s as %s (dev %s %.4f, dev retention %.4f)", name, version, CHAMPION, metric,
                 dev["student"], dev["retention"])
    else:
        client.set_model_version_tag(name, version, "distilflow.gate", f"failed: {reason}")
        log.warning("registered %s v%s without the %s alias: %s", name, version, CHAMPION, reason)
    return model_uri, version, reason is None, reason


def register_export(cfg: PipelineConfig, tracked: bool, summary: dict, tags: dict[str, str],
                    log_model: Callable[[], Any]) -> dict:
    """After the export dir is complete: register it (or find this run's version) and gate it on the
    summary's dev block; the registration fields go into export_summary.json (rewritten atomically)."""
    model_uri = version = None
    champion = False
    if not tracked:
        reason = "tracking disabled: nothing registered"
    elif not cfg.export.register_model:
        reason = "export.register_model is false"
    else:
        card = cfg.data_dir / "data_card.json"
        tags = {"data_card_sha256": data.sha256_file(card) if card.exists() else "", "onnx": summary["served"],
                "mode": summary["mode"], **({"kfp_run_id": cfg.tracking.kfp_run_id} if cfg.tracking.kfp_run_id else {}),
                **tags}
        model_uri, version, champion, reason = publish(cfg, log_model, tags, summary["dev"], summary["content_digest"])
    summary.update(model_uri=model_uri, registered_model=cfg.export.model_name if version else None,
                   registered_version=version, champion=champion, gate_reason=reason)
    data.write_json(cfg.export_dir / "export_summary.json", summary)
    return summary
