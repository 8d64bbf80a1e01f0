"""Publishing an exported student, both tasks: the pyfunc bundle and the code it ships, the
pinned requirements, reading evaluate's report, and registration in the MLflow model registry
with the `champion` alias moved only when the quality gate holds.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from components.lib import tracking
from components.lib.config import PipelineConfig
from components.lib.errors import UserError

log = logging.getLogger(__name__)

CHAMPION = "champion"
# What the pyfunc imports at serving time (numpy, pandas, onnxruntime, tokenizers; no torch).
PYFUNC_PACKAGES = ("mlflow", "onnxruntime", "transformers", "tokenizers", "numpy", "pandas")
CLASSIFIER_MODULES = ("pyfunc.py", "truncation.py")  # what the classifier pyfunc imports, shipped with it


def pyfunc_bundle(student_dir: Path, onnx_path: Path, student, out: Path, extra: dict | None = None) -> Path:
    """The pyfunc's one artifact folder: tokenizer files, vocab/config JSON, the ONNX graph, pyfunc.json
    (`extra` adds keys to pyfunc.json, e.g. the token tagger's pre-tokeniser)."""
    from components.lib.pyfunc import PYFUNC_CONFIG

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
    """A minimal `components` package holding only these lib/ modules (lib/pyfunc.py and
    truncation.py, plus tokens.py and errors.py for the token tagger), so the model loads without
    the repo."""
    lib = Path(__file__).resolve().parent
    pkg = out / "components"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lib" / "__init__.py").write_text("")
    for name in modules:
        shutil.copy2(lib / name, pkg / "lib" / name)
    return [str(pkg)]


def pip_requirements() -> list[str]:
    return tracking.pip_requirements(PYFUNC_PACKAGES)


def read_report(cfg: PipelineConfig) -> dict:
    path = cfg.eval_dir / "report.json"
    if not path.exists():
        raise UserError(f"{path}: not found (run the evaluate step first)")
    rep = json.loads(path.read_text())
    for key in ("student", "retention"):
        if key not in rep:
            raise UserError(f"{path}: key '{key}' missing")
    return rep


def gate(accuracy: float, retention: float, min_retention: float, champion_accuracy: float | None,
         champion_version: str | None, metric: str = "accuracy") -> str | None:
    """None when the version may become champion, else the reason it may not. `accuracy` is the
    headline test score named by `metric` (entity f1 for token classification)."""
    reasons = []
    if retention < min_retention:
        reasons.append(f"retention {retention:.4f} < export.min_retention {min_retention:.4f}")
    if champion_accuracy is not None and accuracy < champion_accuracy - 1e-9:  # a float round trip is no regression
        reasons.append(f"test {metric} {accuracy:.4f} below champion v{champion_version} ({champion_accuracy:.4f})")
    return "; ".join(reasons) or None


def current_champion(client, name: str, metric: str = "accuracy") -> tuple[str | None, float | None]:
    """(version, score under `metric`) of the alias holder, or (None, None) when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    if metric in mv.tags:
        return str(mv.version), float(mv.tags[metric])
    if mv.run_id:  # registered by hand: fall back to the run's logged score
        metrics = client.get_run(mv.run_id).data.metrics
        if metric in metrics:
            return str(mv.version), float(metrics[metric])
    return str(mv.version), None


def register(cfg: PipelineConfig, model_uri: str, tags: dict[str, str], accuracy: float, retention: float,
             metric: str = "accuracy"):
    """Register model_uri; move `champion` only when the gate holds. -> (version, champion?, reason)."""
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    name = cfg.export.model_name
    champ_version, champ_acc = current_champion(client, name, metric)
    mv = mlflow.register_model(model_uri, name, tags=tags)
    reason = gate(accuracy, retention, cfg.export.min_retention, champ_acc, champ_version, metric)
    if reason is None:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        client.set_model_version_tag(name, mv.version, "distilflow.gate", "passed")
        log.info("registered %s v%s as %s (%s %.4f, retention %.4f)", name, mv.version, CHAMPION, metric, accuracy, retention)
    else:
        client.set_model_version_tag(name, mv.version, "distilflow.gate", f"failed: {reason}")
        log.warning("registered %s v%s without the %s alias: %s", name, mv.version, CHAMPION, reason)
    return str(mv.version), reason is None, reason
