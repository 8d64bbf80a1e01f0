"""evaluate for token classification: teacher vs student tagger(s) vs baseline on the test split.

Quality is entity-level precision/recall/F1 (seqeval, exact span match) overall, per entity type
and per language when the test table has a `lang` column (then also their unweighted mean over
languages, each student's OOV share of test pieces and a per-language retention summary), plus
word-level tag agreement with the teacher. Size and speed are measured as for classification, in this process on this machine:
sentences/s at evaluate.batch_size and batch-1 p50/p95 latency, torch for the teacher, torch and
ONNX Runtime for every student. Words past a model's max_length count as O (the alignment rule).
Every model is also scored (entity F1) on the dev split, report.json's `dev` block: export decides
int8 keep/drop and the champion gate on those, never on test.
Writes cfg.eval_dir atomically: report.json, report.md, PNG plots.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from components.lib.contracts import data, token_data
from components.lib.core import ner_metrics
from components.lib.core.decode import decode_tags
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report, report_md
from components.lib.evaluation.protocol import build_report, find_students, timings
from components.lib.settings.config import PipelineConfig
from components.lib.tracking import runs as tracking

log = logging.getLogger(__name__)

TASK = Task.token_classification
METRIC = "f1"  # entity-level micro F1: the headline score (retention, the export gate)


class TokenEvalResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    report_path: str
    teacher_f1: float  # entity-level micro F1 on the test split
    student_mode: str
    student_f1: float
    baseline_f1: float | None
    retention: float  # student_f1 / teacher_f1
    compression: float
    speedup: float  # student / teacher sentences/s (torch)
    speedup_onnx: float
    students: list[str]


def tag_agreement(a: list[list[str]], b: list[list[str]]) -> float:
    """Share of words on which two taggers predict the same tag."""
    same = sum(x == y for s, t in zip(a, b, strict=True) for x, y in zip(s, t, strict=True))
    total = sum(len(s) for s in a)
    return same / total if total else 1.0


def scores(gold: list[list[str]], pred: list[list[str]], langs: list[str] | None) -> dict:
    """entity_scores, plus per_language when the test split has languages."""
    out = ner_metrics.entity_scores(gold, pred)
    if langs is not None:
        out["per_language"] = ner_metrics.by_language(gold, pred, langs)
        macro = ner_metrics.macro_over_languages(out["per_language"])
        out.update({f"language_macro_{k}": v for k, v in macro.items()})
    return out


def languages_summary(teacher: dict, student: dict, baseline: dict | None) -> dict:
    """Per language: teacher, baseline and student entity F1 and retention (student / teacher,
    0 when the teacher scores 0); retention mean and min over languages."""
    per = {}
    for lang, t in teacher["per_language"].items():
        s = student["per_language"][lang]["f1"]
        row = {"teacher_f1": t["f1"]}
        if baseline is not None:
            row["baseline_f1"] = baseline["per_language"][lang]["f1"]
        row.update(student_f1=s, retention=s / t["f1"] if t["f1"] else 0.0)
        if "oov_rate_per_language" in student:
            row["student_oov_rate"] = student["oov_rate_per_language"][lang]
        per[lang] = row
    retention = {lang: row["retention"] for lang, row in per.items()}
    worst = min(retention, key=retention.__getitem__)
    return {"student": student["mode"], "per_language": per, "retention_mean": sum(retention.values()) / len(retention),
            "retention_min": retention[worst], "retention_min_language": worst}


def special_piece_ids(tokenizer) -> list[int]:
    """The tokenizer's CLS/SEP/pad piece ids: framing, not text, so not counted as OOV."""
    return [t for t in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if t is not None]


def dev_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity precision/recall/F1 on the dev split (what export decides on)."""
    m = ner_metrics.entity_scores(gold, pred)
    return {k: m[k] for k in ("f1", "precision", "recall")}


def evaluate_teacher(cfg: PipelineConfig, sentences: list[list[str]], gold: list[list[str]], label_names: list[str],
                     langs: list[str] | None, dev: tuple[list[list[str]], list[list[str]]]) -> tuple[dict, list[list[str]]]:
    from components.lib.core.torch_utils import count_parameters
    from components.lib.models.teacher import head_is_trained, label_names_of, load_teacher, score_words

    path = tracking.resolve_teacher(cfg)
    if not head_is_trained(path, TASK):
        raise UserError(f"{path}: not a token classifier (config.json names no *ForTokenClassification); "
                        "fine-tune the teacher first")
    model, tokenizer = load_teacher(path, task=TASK)
    if label_names_of(model) != label_names:
        raise UserError(f"{path}/config.json: id2label {label_names_of(model)} differs from the test split's {label_names}")
    max_len, bs = cfg.teacher.max_length, cfg.evaluate.batch_size
    t0 = time.perf_counter()
    with tqdm(total=len(sentences), desc="teacher: tagging test", unit="sent", disable=None) as bar:
        logits, _ = score_words(model, tokenizer, sentences, max_len, bs, progress=bar.update)
    log.info("teacher tagged %d test sentences in %.1fs", len(sentences), time.perf_counter() - t0)
    pred = decode_tags(logits, [len(x) for x in sentences], label_names)
    speed, lat = timings(lambda b: score_words(model, tokenizer, b, max_len, bs), sentences, cfg)
    out = scores(gold, pred, langs)
    out["dev"] = dev_scores(dev[1], decode_tags(score_words(model, tokenizer, dev[0], max_len, bs)[0], [len(x) for x in dev[0]], label_names))
    out.update(model=cfg.transfer.teacher or str(cfg.teacher_dir), path=str(path), max_length=max_len,
               params=count_parameters(model), size_bytes=report.dir_size_bytes(Path(path)) if isinstance(path, Path) else None,
               throughput=speed, latency_ms=lat)
    log.info("teacher: entity F1 %.4f, %.1f sentences/s, p50 %.1f ms", out["f1"], speed, lat["p50"])
    return out, pred


def evaluate_student(cfg: PipelineConfig, path: Path, sentences: list[list[str]], gold: list[list[str]],
                     label_names: list[str], langs: list[str] | None, teacher_pred: list[list[str]], scratch: Path,
                     dev: tuple[list[list[str]], list[list[str]]]) -> dict:
    from components.lib.core.tokens import encode_words
    from components.lib.core.torch_utils import count_parameters
    from components.lib.models.student_io import load_student, predict_tags, predict_word_logits
    from components.lib.publish.onnx import export_onnx, onnx_predict_word_logits, ort_session

    st = load_student(path)
    if not st.arch.per_token:
        raise UserError(f"{path}/config.json: a {st.arch.task} student, but task is token-classification")
    if st.label_names != label_names:
        raise UserError(f"{path}/config.json: label_names {st.label_names} differ from the test split's {label_names}")
    bs = cfg.evaluate.batch_size
    pred = predict_tags(st, sentences, bs)
    speed, lat = timings(lambda b: predict_word_logits(st, b, bs), sentences, cfg)
    onnx_path = export_onnx(st, scratch / f"{st.mode.replace('+', '_')}.onnx", cfg.export.opset)
    session = ort_session(onnx_path, cfg.evaluate.num_threads)
    speed_onnx, lat_onnx = timings(lambda b: onnx_predict_word_logits(session, st, b, bs), sentences, cfg)
    out = scores(gold, pred, langs)
    out["dev"] = dev_scores(dev[1], predict_tags(st, dev[0], bs))
    out.update(mode=st.mode, path=str(path), max_length=st.max_length, agreement=tag_agreement(pred, teacher_pred),
               params=count_parameters(st.model), size_bytes=report.dir_size_bytes(path),
               onnx_size_bytes=onnx_path.stat().st_size, throughput=speed, latency_ms=lat,
               throughput_onnx=speed_onnx, latency_ms_onnx=lat_onnx)
    # The pieces the student sees: the same encoding and truncation as student_io.word_ids.
    pieces = encode_words(st.tokenizer, sentences, st.max_length).input_ids
    out.update(ner_metrics.oov_rates(pieces, st.vocab, special_piece_ids(st.tokenizer), langs))
    log.info("student %s: entity F1 %.4f, tag agreement %.4f, %.1f sentences/s torch, %.1f ONNX", st.mode,
             out["f1"], out["agreement"], speed, speed_onnx)
    return out


def write_outputs(rep: dict, out: Path) -> None:
    """report.json, report.md and the plots into `out` (the caller's temp dir)."""
    data.write_json(out / "report.json", rep)
    points = [("teacher (torch)", rep["teacher"]["throughput"], rep["teacher"]["f1"])]
    for mode, m in rep["students"].items():
        points += [(f"{mode} (torch)", m["throughput"], m["f1"]), (f"{mode} (ONNX)", m["throughput_onnx"], m["f1"])]
    report.plot_accuracy_speed(points, f"entity F1 vs speed, batch {rep['batch_size']}", out / "f1_vs_speed.png",
                               ylabel="test entity F1", xlabel="sentences/s (log scale)")
    models = {"teacher": rep["teacher"], **rep["students"]}
    report.plot_per_type_f1({name: m["per_type"] for name, m in models.items()}, "entity F1 per type", out / "f1_per_type.png")
    if rep.get("languages_summary"):
        f1s = {"teacher": rep["teacher"]}
        if "baseline" in rep:
            f1s[f"baseline ({rep['baseline']['mode']})"] = rep["baseline"]
        f1s[f"student ({rep['student']['mode']})"] = rep["student"]
        report.plot_per_language_f1({name: {lang: s["f1"] for lang, s in m["per_language"].items()} for name, m in f1s.items()},
                                    "entity F1 per language", out / "f1_per_language.png")
    (out / "report.md").write_text(report_md.render_ner_markdown(rep))


def run(cfg: PipelineConfig, student_dirs: dict[str, Path] | None = None) -> TokenEvalResult:
    import torch

    if cfg.evaluate.num_threads:
        torch.set_num_threads(cfg.evaluate.num_threads)
    dirs = find_students(cfg, student_dirs)
    test = token_data.read_token_labeled(cfg.data_dir / "test.parquet")
    sentences = test.table.column("tokens").to_pylist()
    gold = ner_metrics.tag_names(test.table.column("tags").to_pylist(), test.label_names)
    langs = [str(x) for x in test.table.column("lang").to_pylist()] if test.has_lang else None
    if not sentences:
        raise UserError(f"{cfg.data_dir / 'test.parquet'}: no sentences")
    dev_split = token_data.read_token_labeled(cfg.data_dir / "dev.parquet")
    if dev_split.label_names != test.label_names:
        raise UserError(f"{cfg.data_dir / 'dev.parquet'}: label_names {dev_split.label_names} differ from test's {test.label_names}")
    dev_sentences = dev_split.table.column("tokens").to_pylist()
    dev = (dev_sentences, ner_metrics.tag_names(dev_split.table.column("tags").to_pylist(), dev_split.label_names))
    card_path = cfg.data_dir / "data_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None

    with tracking.step_run(cfg, "evaluate") as tr:
        tr.log_params({"evaluate": cfg.evaluate.model_dump(mode="json"), "task": TASK,
                       "students": {m.replace("+", "_"): str(p) for m, p in dirs.items()}, "test_rows": len(sentences)})
        teacher, teacher_pred = evaluate_teacher(cfg, sentences, gold, test.label_names, langs, dev)
        with tempfile.TemporaryDirectory() as scratch:
            students = {m: evaluate_student(cfg, p, sentences, gold, test.label_names, langs, teacher_pred, Path(scratch), dev)
                        for m, p in dirs.items()}
        rep = {"task": TASK.value, **build_report(cfg, teacher, students, test.label_names, len(sentences), card,
                                                  metric=METRIC, dev_rows=len(dev_sentences))}
        rep["test_words"] = sum(len(s) for s in sentences)
        rep["entity_types"] = sorted({t for m in (teacher, *students.values()) for t in m["per_type"]})
        rep["languages"] = sorted(set(langs)) if langs is not None else None
        rep["languages_summary"] = languages_summary(teacher, rep["student"], rep.get("baseline")) if langs is not None else None
        with data.atomic_dir(cfg.eval_dir) as out:
            write_outputs(rep, out)
        logged = {k: rep[k] for k in ("teacher", "students", "retention", "dev", "params", "compression", "throughput",
                                      "speedup", "speedup_onnx", "latency_ms")}
        headline = ("f1", "precision", "recall", "macro_f1") + (("language_macro_f1",) if langs is not None else ())
        logged["student"] = {k: rep["student"][k] for k in headline}
        if "baseline" in rep:
            logged["baseline"] = {k: rep["baseline"][k] for k in headline}
        if langs is not None:
            logged["student"]["per_language"] = {lang: {"f1": m["f1"]} for lang, m in rep["student"]["per_language"].items()}
            logged["languages_summary"] = rep["languages_summary"]
        tr.log_metrics(report.flat_metrics(logged))
        tr.set_tags({"distilflow.student_mode": rep["student"]["mode"], "distilflow.cpu": rep["environment"]["cpu"],
                     "distilflow.task": TASK})
        tr.log_artifacts(cfg.eval_dir, "eval")

    log.info("retention %.4f (entity F1), compression %.1fx, speed-up %.1fx (ONNX %.1fx); report %s", rep["retention"],
             rep["compression"], rep["speedup"], rep["speedup_onnx"], cfg.eval_dir / "report.json")
    return TokenEvalResult(
        report_path=str(cfg.eval_dir / "report.json"), teacher_f1=teacher["f1"], student_mode=rep["student"]["mode"],
        student_f1=rep["student"]["f1"], baseline_f1=rep["baseline"]["f1"] if "baseline" in rep else None,
        retention=rep["retention"], compression=rep["compression"], speedup=rep["speedup"],
        speedup_onnx=rep["speedup_onnx"], students=list(students),
    )
