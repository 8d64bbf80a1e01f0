"""export: ONNX (+ int8) with a parity check, an MLflow pyfunc over raw text, the registry gate.

Reads the chosen student (cfg.student_dir(cfg.student.mode)), cfg.eval_dir/report.json (its
accuracy and retention decide the gate) and cfg.data_dir/test.parquet (parity and the int8
accuracy only; evaluation already happened). Writes cfg.export_dir atomically:
model.onnx, model.int8.onnx (when kept), pyfunc/ (an MLflow model dir), export_summary.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.lib import data, report, tracking
from components.lib.cli import step_main
from components.lib.config import PipelineConfig
from components.lib.errors import UserError

if TYPE_CHECKING:
    from components.export_tokens import TokenExportResult

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
CHAMPION = "champion"
INPUT_NAMES = ["input_ids", "attention_mask"]


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch: the exported graph is wrong, never ship it."""


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    onnx_path: str
    onnx_int8_path: str | None
    parity_max_abs_diff: float
    accuracy_fp32: float
    accuracy_int8: float | None
    int8_kept: bool
    int8_reason: str
    pyfunc_dir: str
    model_uri: str | None
    registered_model: str | None
    registered_version: str | None
    champion: bool
    gate_reason: str | None


# ---------------------------------------------------------------- ONNX

def export_onnx(student, path: Path, opset: int) -> Path:
    """The student's logits(input_ids, attention_mask) -> (B, C) as ONNX, batch and sequence dynamic
    (a token-classification student's (B, T, C) logits get the dynamic sequence axis too)."""
    import torch

    from components.lib.student import LogitsOnly
    from components.lib.student_io import encode

    ids, mask = encode(student, ["an example to trace", "a second, longer example to trace the graph with"])
    wrapper = LogitsOnly(student.model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript and this graph
    # (LSTMs over a gathered, length-reversed input) exports cleanly the classic way.
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns that LSTM shapes may not generalise across batch sizes; check_parity and
        # the tests run other batch and sequence sizes through the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*variable length with LSTM.*")
        torch.onnx.export(
            wrapper, (ids, mask), str(path), dynamo=False, opset_version=opset,
            input_names=INPUT_NAMES, output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch", 1: "sequence"} if student.arch.per_token else {0: "batch"}},
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_predict_logits(session, student, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (N, C) logits from ONNX Runtime, tokenised exactly as student_io.predict_logits."""
    from components.lib.student_io import length_batches, pad_batch, tokenize_ids

    seqs = [student.vocab.encode(s) for s in tokenize_ids(student.tokenizer, texts, student.max_length)]
    out = np.zeros((len(seqs), len(student.label_names)), dtype=np.float32)
    for idx in length_batches(np.array([len(s) for s in seqs]), batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx])  # (B, T) int64 each
        out[idx] = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    return out


def check_parity(student, session, texts: list[str], batch_size: int = 64) -> float:
    """Max |torch - ORT| logit over texts on identical padded batches; raises ParityError past 1e-4
    or on any argmax difference."""
    import torch

    from components.lib.student_io import encode

    worst = 0.0
    for i in range(0, len(texts), batch_size):
        ids, mask = encode(student, texts[i : i + batch_size])
        with torch.inference_mode():
            ref = student.model.logits(ids, mask).float().numpy()  # (B, C)
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        flips = int((ref.argmax(1) != got.argmax(1)).sum())
        if diff > PARITY_ATOL or flips:
            raise ParityError(f"ONNX parity failed on rows {i}..{i + len(ids) - 1}: max |Δlogit| {diff:.2e} "
                              f"(limit {PARITY_ATOL:.0e}), {flips} argmax differences")
    return worst


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly): LSTM, MatMul, Gather."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


# ---------------------------------------------------------------- pyfunc

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


CLASSIFIER_MODULES = ("pyfunc.py", "truncation.py")  # what the classifier pyfunc imports, shipped with it


def pyfunc_code_paths(out: Path, modules: tuple[str, ...] = CLASSIFIER_MODULES) -> list[str]:
    """A minimal `components` package holding only these lib/ modules (lib/pyfunc.py and
    truncation.py, plus tokens.py and errors.py for the token tagger), so the model loads without
    the repo."""
    lib = Path(__file__).resolve().parent / "lib"
    pkg = out / "components"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lib" / "__init__.py").write_text("")
    for name in modules:
        shutil.copy2(lib / name, pkg / "lib" / name)
    return [str(pkg)]


def pip_requirements() -> list[str]:
    from importlib import metadata

    pkgs = ("mlflow", "onnxruntime", "transformers", "tokenizers", "numpy", "pandas")
    return [f"{p}=={metadata.version(p)}" for p in pkgs]


def pyfunc_kwargs(bundle: Path, code_dir: Path, example_texts: list[str], label_names: list[str]) -> dict:
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from components.lib.pyfunc import BUNDLE, StudentTextClassifier

    outputs = [ColSpec("string", "label"), ColSpec("double", "score")]
    outputs += [ColSpec("double", f"prob_{n}") for n in label_names]
    return {
        "python_model": StudentTextClassifier(),
        "artifacts": {BUNDLE: str(bundle)},
        "code_paths": pyfunc_code_paths(code_dir),
        # One unnamed string column: MLflow then accepts a list of strings as well as a DataFrame
        # whose single column is `text` (a named column would reject plain lists).
        "signature": ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(outputs)),
        "input_example": pd.DataFrame({"text": example_texts}),
        "pip_requirements": pip_requirements(),
    }


# ---------------------------------------------------------------- registry gate

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


# ---------------------------------------------------------------- the step

def _read_report(cfg: PipelineConfig) -> dict:
    path = cfg.eval_dir / "report.json"
    if not path.exists():
        raise UserError(f"{path}: not found (run the evaluate step first)")
    rep = json.loads(path.read_text())
    for key in ("student", "retention"):
        if key not in rep:
            raise UserError(f"{path}: key '{key}' missing")
    return rep


def run(cfg: PipelineConfig) -> ExportResult | TokenExportResult:
    import torch

    from components.lib.student_io import load_student

    if cfg.is_token_task:
        from components import export_tokens

        return export_tokens.run(cfg)
    if cfg.export.num_threads:
        torch.set_num_threads(cfg.export.num_threads)
    student_dir = cfg.student_dir(cfg.student.mode)
    student = load_student(student_dir)
    rep = _read_report(cfg)
    test = data.read_labeled(cfg.data_dir / "test.parquet")
    texts, labels = test.table.column("text").to_pylist(), np.asarray(test.table.column("label").to_pylist())
    if test.label_names != student.label_names:
        raise UserError(f"{student_dir}/config.json: label_names {student.label_names} differ from the test split's {test.label_names}")
    accuracy, retention = float(rep["student"]["accuracy"]), float(rep["retention"])
    card = cfg.data_dir / "data_card.json"
    ec = cfg.export

    with tracking.step_run(cfg, "export") as tr, tempfile.TemporaryDirectory() as scratch:
        tr.log_params({"export": ec.model_dump(mode="json"), "student_dir": str(student_dir), "mode": student.mode})
        with data.atomic_dir(cfg.export_dir) as out:
            onnx_path = export_onnx(student, out / "model.onnx", ec.opset)
            session = ort_session(onnx_path, cfg.export.num_threads)
            worst = check_parity(student, session, texts)
            acc_fp32 = float((onnx_predict_logits(session, student, texts).argmax(1) == labels).mean())
            log.info("ONNX parity on %d test texts: max |Δlogit| %.2e; accuracy %.4f", len(texts), worst, acc_fp32)

            q = {"accuracy": None, "kept": False, "reason": "export.quantize is false", "path": None}
            if ec.quantize:
                q = _try_int8(onnx_path, out / "model.int8.onnx", student, texts, labels, acc_fp32, cfg)
            serve = Path(q["path"]) if (q["kept"] and ec.serve_int8) else onnx_path

            import mlflow.pyfunc
            import pandas as pd

            bundle = pyfunc_bundle(student_dir, serve, student, Path(scratch) / "student")
            kwargs = pyfunc_kwargs(bundle, Path(scratch) / "code", texts[:2], student.label_names)
            mlflow.pyfunc.save_model(str(out / "pyfunc"), **kwargs)
            check = mlflow.pyfunc.load_model(str(out / "pyfunc")).predict(pd.DataFrame({"text": texts[:8]}))
            want = [student.label_names[i] for i in onnx_predict_logits(ort_session(serve), student, texts[:8]).argmax(1)]
            if check["label"].tolist() != want:
                raise ParityError(f"pyfunc predictions {check['label'].tolist()} differ from ONNX {want}")

            summary = {
                "onnx": {"path": "model.onnx", "opset": ec.opset, "bytes": onnx_path.stat().st_size,
                         "parity_max_abs_diff": worst, "accuracy": acc_fp32},
                "int8": {k: v for k, v in q.items() if k != "path"} | {"path": q["path"] and Path(q["path"]).name},
                "served": serve.name, "student_dir": str(student_dir), "mode": student.mode,
                "accuracy": accuracy, "retention": retention, "model_uri": None, "registered_model": None,
                "registered_version": None, "champion": False, "gate_reason": None,
            }
            model_uri = version = reason = None
            champion = False
            if tr.run_id is not None:
                info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(bundle, Path(scratch) / "code2", texts[:2], student.label_names))
                model_uri = info.model_uri
                if ec.register_model:
                    tags = {
                        "teacher": str(rep.get("teacher", {}).get("model", student.config.get("teacher", {}))),
                        "data_card_sha256": data.sha256_file(card) if card.exists() else "",
                        "mode": student.mode, "accuracy": repr(accuracy), "retention": repr(retention),
                        "onnx": serve.name,
                    }
                    if cfg.tracking.kfp_run_id:
                        tags["kfp_run_id"] = cfg.tracking.kfp_run_id
                    version, champion, reason = register(cfg, model_uri, tags, accuracy, retention)
                else:
                    reason = "export.register_model is false"
            else:
                reason = "tracking disabled: nothing registered"
            summary.update(model_uri=model_uri, registered_model=ec.model_name if version else None,
                           registered_version=version, champion=champion, gate_reason=reason)
            data.write_json(out / "export_summary.json", summary)

        tr.log_metrics({"accuracy": accuracy, "retention": retention, "onnx_accuracy": acc_fp32,
                        "parity_max_abs_diff": worst, "onnx_bytes": summary["onnx"]["bytes"],
                        **report.flat_metrics({k: v for k, v in q.items() if k != "path"}, "int8.")})
        tr.set_tags({"distilflow.champion": champion, **({"distilflow.gate": reason} if reason else {})})
        tr.log_artifacts(cfg.export_dir, "export")

    int8 = cfg.export_dir / "model.int8.onnx"
    return ExportResult(
        onnx_path=str(cfg.export_dir / "model.onnx"), onnx_int8_path=str(int8) if int8.exists() else None,
        parity_max_abs_diff=worst, accuracy_fp32=acc_fp32, accuracy_int8=q["accuracy"], int8_kept=q["kept"],
        int8_reason=q["reason"], pyfunc_dir=str(cfg.export_dir / "pyfunc"), model_uri=model_uri,
        registered_model=summary["registered_model"], registered_version=version, champion=champion, gate_reason=reason,
    )


def try_int8(fp32: Path, out: Path, cfg: PipelineConfig, *, metric: str, label: str, base: float,
             measure: Callable[[Any], float], predict: Callable[[Any, list], Any], items: list, unit: str) -> dict:
    """Quantize, re-measure the test metric (measure(session)) and speed (predict(session, batch));
    keep the int8 file only if the metric drops <= export.max_quant_drop."""
    quantize_int8(fp32, out)
    sess8, sess32 = ort_session(out, cfg.export.num_threads), ort_session(fp32, cfg.export.num_threads)
    value8 = measure(sess8)
    timing = report.repeat_to(items, cfg.evaluate.throughput_rows)
    bs = cfg.evaluate.batch_size
    speed8 = report.throughput(lambda b: predict(sess8, b), timing, bs)
    speed32 = report.throughput(lambda b: predict(sess32, b), timing, bs)
    drop = base - value8
    kept = drop <= cfg.export.max_quant_drop
    reason = (f"{label} {value8:.4f} vs fp32 {base:.4f} (drop {drop:+.4f}, limit {cfg.export.max_quant_drop})"
              + ("" if kept else ": discarded"))
    log.info("int8: %s; %.0f vs %.0f %s/s; %.1f vs %.1f MB", reason, speed8, speed32, unit,
             out.stat().st_size / 2**20, fp32.stat().st_size / 2**20)
    result = {metric: value8, f"{metric}_drop": drop, "kept": kept, "reason": reason, "bytes": out.stat().st_size,
              "throughput": speed8, "throughput_fp32": speed32, "path": str(out) if kept else None}
    if not kept:
        out.unlink()
    return result


def _try_int8(fp32: Path, out: Path, student, texts, labels, acc_fp32: float, cfg: PipelineConfig) -> dict:
    bs = cfg.evaluate.batch_size
    return try_int8(
        fp32, out, cfg, metric="accuracy", label="accuracy", base=acc_fp32, items=texts, unit="examples",
        measure=lambda sess: float((onnx_predict_logits(sess, student, texts).argmax(1) == labels).mean()),
        predict=lambda sess, b: onnx_predict_logits(sess, student, b, bs),
    )


def main(argv=None):
    return step_main(run, "Export the student: ONNX (+int8), an MLflow pyfunc, registry with a quality gate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
