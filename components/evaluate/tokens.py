"""evaluate for token classification: the EvalHooks (components/evaluate/hooks.py) that tag
pre-split sentences.

Quality is entity-level precision/recall/F1 (seqeval, exact span match) overall, per entity type
and per language when the test table has a `lang` column (then also their unweighted mean over
languages, each student's OOV share of test pieces and a per-language retention summary), plus
word-level tag agreement with the teacher. Speed is sentences/s. Words past a model's max_length
count as O (the alignment rule). Tags are decoded by evaluate.decoding (core/decode.py); each
model's `decoding` block also gives its test entity F1 under the other decoding and how often its
argmax tags break the tag scheme, report.json's `decoding` the one used. Every model is also scored (entity F1) on the dev split,
report.json's `dev` block: export decides int8 keep/drop and the champion gate on those, never on
test. The plots are entity F1 vs speed, per type and (with languages) per language.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from components.evaluate.hooks import Examples, LogLines
from components.lib.contracts import token_data
from components.lib.core import ner_metrics
from components.lib.core.decode import DECODINGS, decode_tags, invalid_transitions
from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.evaluation import report, report_md
from components.lib.settings.config import PipelineConfig

log = logging.getLogger(__name__)

TASK = Task.token_classification
LOGGED_TASK = TASK
METRIC = "f1"  # entity-level micro F1: the headline score (retention, the export gate)
LINES = LogLines(
    progress="teacher: tagging test", unit="sent", scored="teacher tagged %d test sentences in %.1fs",
    teacher="teacher: entity F1 %.4f, %.1f sentences/s, p50 %.1f ms",
    student="student %s: entity F1 %.4f, tag agreement %.4f, %.1f sentences/s torch, %.1f ONNX",
    done="retention %.4f (entity F1), compression %.1fx, speed-up %.1fx (ONNX %.1fx); report %s",
)
read_split = token_data.read_token_labeled


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


agreement = tag_agreement


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


def split_examples(split: token_data.TokenLabeled) -> Examples:
    gold = ner_metrics.tag_names(split.table.column("tags").to_pylist(), split.label_names)
    langs = [str(x) for x in split.table.column("lang").to_pylist()] if split.has_lang else None
    return Examples(split.table.column("tokens").to_pylist(), gold, langs)


def examples(splits: dict[str, token_data.TokenLabeled], data_dir: Path) -> tuple[Examples, Examples]:
    test = split_examples(splits["test"])
    if not test.inputs:
        raise UserError(f"{data_dir / 'test.parquet'}: no sentences")
    return test, split_examples(splits["dev"])


def load_teacher(path, max_length: int, batch_size: int, keep_tail: int = 0):  # keep_tail: sequence only (config refuses it here)
    from components.lib.models import teacher

    if not teacher.head_is_trained(path, TASK):
        raise UserError(f"{path}: not a token classifier (config.json names no *ForTokenClassification); "
                        "fine-tune the teacher first")
    model, tokenizer = teacher.load_teacher(path, task=TASK)

    def forward(sentences: list[list[str]], progress=None) -> list:  # per sentence (n_covered, C)
        return teacher.score_words(model, tokenizer, sentences, max_length, batch_size, progress=progress)[0]

    return model, forward


def load_student(path: Path, batch_size: int):
    from components.lib.models import student_io
    from components.lib.publish.onnx import onnx_predict_word_logits

    st = student_io.load_student(path)
    if not st.arch.per_token:
        raise UserError(f"{path}/config.json: a {st.arch.task} student, but task is token-classification")
    return (st, lambda sentences: student_io.predict_word_logits(st, sentences, batch_size),
            lambda session, sentences: onnx_predict_word_logits(session, st, sentences, batch_size))


def predicted_tags(logits: list, ex: Examples, label_names: list[str], decoding: str) -> list[list[str]]:
    return decode_tags(logits, [len(x) for x in ex.inputs], label_names, decoding)


def decoding_block(logits: list, ex: Examples, label_names: list[str], used: str, pred: list[list[str]]) -> dict:
    """The decoding used and what the other would give: entity F1 under each, the forbidden
    transitions in the argmax tags (what constrained decoding repairs), sentences the two tag differently."""
    tags = {used: pred} | {d: predicted_tags(logits, ex, label_names, d) for d in DECODINGS if d != used}
    return {"used": used, **{f"{d}_f1": ner_metrics.entity_scores(ex.gold, tags[d])["f1"] for d in DECODINGS},
            "invalid_transitions_argmax": invalid_transitions(tags["argmax"], label_names),
            "sentences_changed": sum(a != b for a, b in zip(tags["argmax"], tags["constrained"], strict=True))}


def scores(logits: list, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> tuple[dict, list[list[str]]]:
    """entity_scores, plus per_language when the test split has languages and the decoding block;
    and the predicted tags."""
    pred = predicted_tags(logits, ex, label_names, cfg.evaluate.decoding)
    out = ner_metrics.entity_scores(ex.gold, pred)
    if ex.langs is not None:
        out["per_language"] = ner_metrics.by_language(ex.gold, pred, ex.langs)
        macro = ner_metrics.macro_over_languages(out["per_language"])
        out.update({f"language_macro_{k}": v for k, v in macro.items()})
    out["decoding"] = decoding_block(logits, ex, label_names, cfg.evaluate.decoding, pred)
    return out, pred


def dev_scores(logits: list, ex: Examples, label_names: list[str], cfg: PipelineConfig) -> dict:
    """Entity precision/recall/F1 on the dev split (what export decides on), decoded as test is."""
    m = ner_metrics.entity_scores(ex.gold, predicted_tags(logits, ex, label_names, cfg.evaluate.decoding))
    return {k: m[k] for k in ("f1", "precision", "recall")}


def classic_baseline(cfg: PipelineConfig, test: Examples, dev: Examples, label_names: list[str], teacher_pred) -> None:
    """No classic baseline for taggers (the TF-IDF model classifies whole texts)."""
    return None


def student_fields(student, ex: Examples) -> dict:
    """The student's OOV share of test pieces (overall and per language)."""
    from components.lib.core.tokens import encode_words

    # The pieces the student sees: the same encoding and truncation as student_io.word_ids.
    pieces = encode_words(student.tokenizer, ex.inputs, student.max_length).input_ids
    # how the vocabulary was sized: student dirs written before this was recorded give only the size
    vocab = {"size": len(student.vocab), **student.config.get("vocab", {})}
    return {**ner_metrics.oov_rates(pieces, student.vocab, special_piece_ids(student.tokenizer), ex.langs), "vocab": vocab}


def complete_report(rep: dict, test: Examples) -> dict:
    rep = {"task": TASK.value, **rep, "decoding": rep["teacher"]["decoding"]["used"]}  # what export must ship
    rep["test_words"] = sum(len(s) for s in test.inputs)
    rep["entity_types"] = sorted({t for m in (rep["teacher"], *rep["students"].values()) for t in m["per_type"]})
    rep["languages"] = sorted(set(test.langs)) if test.langs is not None else None
    rep["languages_summary"] = (languages_summary(rep["teacher"], rep["student"], rep.get("baseline"))
                                if test.langs is not None else None)
    return rep


def logged_scores(rep: dict) -> dict:
    with_langs = rep["languages"] is not None
    headline = ("f1", "precision", "recall", "macro_f1") + (("language_macro_f1",) if with_langs else ())
    out = {"student": {k: rep["student"][k] for k in headline}}
    if "baseline" in rep:
        out["baseline"] = {k: rep["baseline"][k] for k in headline}
    if with_langs:
        out["student"]["per_language"] = {lang: {"f1": m["f1"]} for lang, m in rep["student"]["per_language"].items()}
        out["languages_summary"] = rep["languages_summary"]
    return out


def write_views(rep: dict, out: Path) -> None:
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


def result(rep: dict, report_path: Path) -> TokenEvalResult:
    return TokenEvalResult(
        report_path=str(report_path), teacher_f1=rep["teacher"]["f1"], student_mode=rep["student"]["mode"],
        student_f1=rep["student"]["f1"], baseline_f1=rep["baseline"]["f1"] if "baseline" in rep else None,
        retention=rep["retention"], compression=rep["compression"], speedup=rep["speedup"],
        speedup_onnx=rep["speedup_onnx"], students=list(rep["students"]),
    )
