"""report.md of the evaluate step: the classification and the token-classification reports.

Pure formatting of the report.json body (lib/evaluation/protocol.py build_report); no metrics computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any, digits: int | str = 3) -> str:
    """A float to `digits` decimals, or to a format spec such as "g"; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, digits if isinstance(digits, str) else f".{digits}f")
    return str(value)


def _millions(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M"


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MB"


def _latency(lat: dict[str, float] | None) -> str:
    return "–" if not lat else f"{lat['p50']:.2f} / {lat['p95']:.2f}"


def _card_line(card: dict[str, Any]) -> list[str]:
    conf = card.get("config") or {}
    rows = card.get("rows") or {}
    budget = conf.get("labels_per_class")
    return [
        f"- Data: `{conf.get('source', 'unknown')}`; classes: {', '.join(card.get('label_names') or [])}",
        f"- Label budget: {'all' if budget is None and conf else _fmt(budget)} labeled examples per class "
        f"({_fmt(rows.get('train'))} train, {_fmt(rows.get('dev'))} dev); transfer set: "
        f"{_fmt(rows.get('transfer'))} unlabeled texts",
    ]


def _metric_name(metric: str) -> str:
    return "entity F1" if metric == "f1" else metric


_TRY = ("Try a stronger teacher (`teacher.model`), longer inputs (`teacher.max_length`, `student.max_length`) or more "
        "transfer data (`data.unlabeled_source`, `data.max_transfer_rows`).")


def _warning_lines(report: dict[str, Any]) -> list[str]:
    """The report's first lines when a baseline (the labels-only student, TF-IDF + logistic
    regression) beats the distilled student on dev: export withholds champion then."""
    dev = report.get("dev") or {}
    name = _metric_name(dev.get("metric", "accuracy"))
    lines = []
    if dev.get("baseline_beats_student"):
        lines += [
            f"> **Distillation did not pay off here: export withholds `champion`.** On the dev split the labels-only "
            f"baseline (dev {name} {_fmt(dev['baseline'])}) beats the distilled student `{report['student']['mode']}` "
            f"({_fmt(dev['student'])}); a student cannot be better than the teacher it copies (teacher dev {name} "
            f"{_fmt(dev['teacher'])}). {_TRY}",
            "",
        ]
    if dev.get("tfidf_beats_student"):
        tfidf = report.get("tfidf") or {}
        lines += [
            f"> **A TF-IDF + logistic regression baseline beats the student here: export withholds `champion`.** On the "
            f"dev split TF-IDF + logistic regression trained on the same {_fmt(tfidf.get('train_rows'))} labeled texts "
            f"(dev {name} {_fmt(dev['tfidf'])}, C = {_fmt(tfidf.get('c'), 'g')} chosen on dev) beats the distilled "
            f"student `{report['student']['mode']}` ({_fmt(dev['student'])}; teacher {_fmt(dev['teacher'])}): a bag of words "
            f"does better with the same labels, at no distillation cost. {_TRY}",
            "",
        ]
    return lines


def _spread(report: dict[str, Any]) -> str:
    """' (median of N interleaved timing rounds, per-round a-b)' when the report has rounds."""
    r = report.get("speedup_rounds")
    if not r:
        return ""
    o = report["speedup_onnx_rounds"]
    return (f" (median of {len(r['rounds'])} interleaved timing rounds; per round torch {r['min']:.1f}-{r['max']:.1f}x, "
            f"ONNX {o['min']:.1f}-{o['max']:.1f}x)")


def _headline_lines(report: dict[str, Any], metric: str, unit: str) -> list[str]:
    """Retention, compression, speed-up and the labels-only baseline's gain, below the scores table."""
    name = _metric_name(metric)
    lines = [
        "",
        f"- **Retention** (student / teacher {name}): {_fmt(report['retention'])}",
        f"- **Compression** (teacher / student parameters): {_fmt(report['compression'], 1)}x",
        f"- **Speed-up** (student / teacher {unit}/s at batch {report['batch_size']}): torch "
        f"{_fmt(report['speedup'], 1)}x, ONNX Runtime {_fmt(report.get('speedup_onnx'), 1)}x" + _spread(report),
    ]
    if "baseline" in report:
        gain = report["student"][metric] - report["baseline"][metric]
        lines.append(f"- Labels-only baseline (same student, no teacher): {name} {_fmt(report['baseline'][metric])}; "
                     f"distillation gain {gain:+.3f}")
    if "tfidf" in report:
        t = report["tfidf"]
        per_c = ", ".join(f"{c}: {_fmt(a)}" for c, a in t["dev_accuracy_per_c"].items())
        lines.append(f"- TF-IDF + logistic regression baseline (the same {t['train_rows']} labeled texts, word 1-2 grams, "
                     f"sublinear tf, min_df {t['min_df']}): {name} {_fmt(t[metric])}; the student's gain "
                     f"{report['student'][metric] - t[metric]:+.3f}. C = {_fmt(t['c'], 'g')} chosen on dev "
                     f"(dev accuracy per C: {per_c}; ties go to the smaller C), {t['vocabulary_size']:,} terms, "
                     f"fit in {_fmt(t['fit_seconds'], 2)} s")
    return lines


def _decision_lines(report: dict[str, Any], unit: str) -> list[str]:
    """Which split each decision used."""
    dev = report.get("dev")
    if not dev:
        return []
    name = _metric_name(dev["metric"])
    baseline = f", labels-only baseline {_fmt(dev['baseline'])}" if dev.get("baseline") is not None else ""
    if dev.get("tfidf") is not None:
        baseline += f", TF-IDF + logistic regression {_fmt(dev['tfidf'])}"
    return [
        "",
        "## Decisions and the split they used",
        "",
        f"- Best teacher epoch and best student epoch of every phase"
        f"{', and the TF-IDF baseline C' if dev.get('tfidf') is not None else ''}: the dev split ({dev['rows']} {unit}).",
        f"- int8 keep/drop and the `champion` gate (export): dev {name}. Here: teacher {_fmt(dev['teacher'])}, "
        f"student `{report['student']['mode']}` {_fmt(dev['student'])}{baseline}; dev retention {_fmt(dev['retention'])}.",
        f"- Test ({report['test_rows']} {unit}): read by this step only, to report; no decision uses it.",
    ]


def _measured_lines(env: dict[str, Any]) -> list[str]:
    """The heading and first line of "Where it was measured": the machine and library versions."""
    return [
        "",
        "## Where it was measured",
        "",
        f"{env['cpu']} ({env['cpu_count']} logical CPUs), torch threads {env['torch_threads']}, Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".",
        *([f"CPU capability: torch kernels {env['torch_cpu_capability']}; SIMD {' '.join(env.get('cpu_flags') or ['(none listed)'])}. "
           "Scores and speeds move with these (README: the spread across machines)."] if env.get("torch_cpu_capability") else []),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: what was distilled, how well, how small, how fast."""
    teacher, student = report["teacher"], report["student"]
    lines = [
        "# Distillation report",
        "",
        *_warning_lines(report),
        "## What was distilled",
        "",
        f"- Teacher: `{teacher['model']}` ({_millions(teacher['params'])} parameters, {teacher['max_length']} tokens)",
        *_card_line(report.get("data_card") or {"label_names": report["label_names"]}),
        f"- Test set: {report['test_rows']} examples (read only by this step)",
        f"- Student: BiLSTM ({_millions(student['params'])} parameters, {student['max_length']} tokens), "
        f"mode `{student['mode']}`",
        *_vocab_line(student),
        "",
        "## How well, how small, how fast",
        "",
        "| model | accuracy | macro-F1 | ECE | agrees w/ teacher | params | weights | ex/s torch | ex/s ONNX "
        "| p50 / p95 ms torch | p50 / p95 ms ONNX |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [("teacher", teacher)] + [(f"student `{mode}`", m) for mode, m in report["students"].items()]
    if "tfidf" in report:  # scikit-learn, in the torch columns; no weights file, no ONNX graph
        rows.append(("TF-IDF + logistic regression (scikit-learn)", report["tfidf"]))
    for name, m in rows:
        lines.append(
            f"| {name} | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} | {_fmt(m['ece'])} | {_fmt(m.get('agreement'))} "
            f"| {_millions(m['params'])} | {_mb(m.get('size_bytes'))} | {_fmt(m['throughput'], 1)} "
            f"| {_fmt(m.get('throughput_onnx'), 1)} | {_latency(m.get('latency_ms'))} | {_latency(m.get('latency_ms_onnx'))} |"
        )
    lines += _headline_lines(report, "accuracy", "examples")
    lines += _decision_lines(report, "examples")
    lines += ["", f"## Per-class scores (student `{student['mode']}`)", "",
              "| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for cls, m in student["per_class"].items():
        lines.append(f"| {cls} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['support']} |")
    lines += [
        *_measured_lines(report["environment"]),
        f"Throughput is raw text in, logits out (tokenisation included) over {report['throughput_rows']} test texts "
        f"at batch {report['batch_size']}; latency is {report['latency_runs']} single-text calls.",
        "",
        "![confusion matrix](confusion_student.png)",
        "",
        "![accuracy vs speed](accuracy_vs_speed.png)",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- Markdown, token classification

def _ner_card_lines(card: dict[str, Any] | None, label_names: Sequence[str]) -> list[str]:
    card = card or {}
    conf = card.get("config") or {}
    rows = card.get("rows") or {}
    langs = conf.get("languages")  # data.languages: data.source is not read
    data = ", ".join(f"{ls['lang']} `{ls['source']}`" for ls in langs) if langs else f"`{conf.get('source', 'unknown')}`"
    return [
        f"- Data: {data}; tags: {', '.join(card.get('label_names') or label_names)}",
        f"- Labeled sentences: {_fmt(rows.get('train'))} train, {_fmt(rows.get('dev'))} dev; transfer set: "
        f"{_fmt(rows.get('transfer'))} unlabeled sentences",
    ]


def _retention_lines(summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return []
    n = len(summary["per_language"])
    return [f"**Per-language retention** (student `{summary['student']}` / teacher entity F1, {n} languages): "
            f"mean {_fmt(summary['retention_mean'])}, min {_fmt(summary['retention_min'])} "
            f"(`{summary['retention_min_language']}`).", ""]


def _prf(m: dict[str, Any] | None) -> list[str]:
    m = m or {}
    return [_fmt(m.get("precision")), _fmt(m.get("recall")), _fmt(m.get("f1"))]


def language_lines(report: dict[str, Any]) -> list[str]:
    """Entity F1 per language of teacher, labels-only baseline and chosen student, weakest student
    first; retention, the student's OOV share and the test sentences; the unweighted mean over
    languages; F1 of other students."""
    teacher, student, baseline = report["teacher"], report["student"], report.get("baseline")
    summary = (report.get("languages_summary") or {}).get("per_language", {})
    trio = [("teacher", teacher)] + ([("labels-only baseline", baseline)] if baseline else []) + [("student", student)]
    shown = {student["mode"], baseline["mode"] if baseline else None}
    others = [(mode, m) for mode, m in report["students"].items() if mode not in shown]
    head = [f"{name} F1" for name, _ in trio] + ["retention", "student OOV", "test sentences", "entities"]
    head += [f"F1 `{mode}`" for mode, _ in others]
    f1 = lambda m, lang: m.get("per_language", {}).get(lang, {}).get("f1")  # noqa: E731
    order = sorted(teacher["per_language"], key=lambda lang: (f1(student, lang) if f1(student, lang) is not None else -1, lang))
    lines = ["", "## Entity F1 per language", "",
             f"Teacher, {'labels-only baseline, ' if baseline else ''}"
             f"student `{student['mode']}`: entity F1 per language, the weakest student first; the macro row is "
             "the unweighted mean over languages. Retention: student / teacher F1. Student OOV: share of the "
             "student's test word pieces (CLS/SEP/pad excluded) its trimmed vocabulary maps to UNK "
             f"({_fmt(student.get('oov_rate'))} over all languages).", "",
             "| language | " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head) + " |"]
    for lang in order:
        t = teacher["per_language"][lang]
        cells = [_fmt(f1(m, lang)) for _, m in trio]
        cells += [_fmt(summary.get(lang, {}).get("retention")), _fmt(student.get("oov_rate_per_language", {}).get(lang)),
                  str(t["sentences"]), str(t["entities_gold"])]
        cells += [_fmt(f1(m, lang)) for _, m in others]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    macro = [_fmt(m.get("language_macro_f1")) for _, m in trio]
    macro += [_fmt((report.get("languages_summary") or {}).get("retention_mean")), _fmt(student.get("oov_rate")),
              str(sum(t["sentences"] for t in teacher["per_language"].values())), "–"]
    macro += [_fmt(m.get("language_macro_f1")) for _, m in others]
    lines.append("| macro (unweighted) | " + " | ".join(macro) + " |")
    return lines


def _decoding_lines(report: dict[str, Any], models: list[tuple[str, dict]]) -> list[str]:
    """How tags were decoded (evaluate.decoding) and the test entity F1 under either decoding."""
    used = report.get("decoding")
    if used is None:
        return []
    lines = ["", f"Tags decoded `{used}` (evaluate.decoding; constrained: Viterbi over the tag scheme's allowed "
             "transitions, argmax: each word's best tag). Test entity F1 under each:", "",
             "| model | argmax | constrained | forbidden transitions in argmax tags | sentences changed |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in models:
        d = m["decoding"]
        lines.append(f"| {name} | {_fmt(d['argmax_f1'])} | {_fmt(d['constrained_f1'])} | {d['invalid_transitions_argmax']} "
                     f"| {d['sentences_changed']} |")
    return lines


def _vocab_line(student: dict[str, Any]) -> list[str]:
    """How big the student's vocabulary is and how it was sized (student.max_vocab, min_count)."""
    v = student.get("vocab")
    if not v:
        return []
    cap, least = v.get("max_vocab"), v.get("min_count")
    how = ""
    if "min_count" in v:
        binds = "the cap binds" if cap is not None and v["size"] >= cap else "every such piece kept"
        how = (f": the teacher pieces seen at least {least} time(s) (student.min_count) in "
               f"{v.get('counted_on', 'the training texts')}, most frequent first, capped by student.max_vocab "
               f"{cap if cap is not None else 'none'} ({binds}), plus pad/unk and the specials")
    of = f" of the teacher's {v['teacher_vocab_size']:,}" if v.get("teacher_vocab_size") else ""
    return [f"- Student vocabulary: {v['size']:,} word pieces{of}{how}"]


def render_ner_markdown(report: dict[str, Any]) -> str:
    """The token-classification report: entity F1 (overall, per type, per language), size, speed."""
    teacher, student = report["teacher"], report["student"]
    models = [("teacher", teacher)] + [(f"student `{mode}`", m) for mode, m in report["students"].items()]
    lines = [
        "# Distillation report (token classification)",
        "",
        *_warning_lines(report),
        *_retention_lines(report.get("languages_summary")),
        "## What was distilled",
        "",
        f"- Teacher: `{teacher['model']}` ({_millions(teacher['params'])} parameters, {teacher['max_length']} pieces)",
        *_ner_card_lines(report.get("data_card"), report["label_names"]),
        f"- Test set: {report['test_rows']} sentences, {report.get('test_words', '–')} words (read only by this step)",
        f"- Student: BiLSTM tagger ({_millions(student['params'])} parameters, {student['max_length']} pieces), "
        f"mode `{student['mode']}`",
        *_vocab_line(student),
        "",
        "## How well, how small, how fast",
        "",
        "Entity scores are exact-span matches (seqeval, CoNLL style), micro-averaged over entities; "
        "words past a model's max_length count as O.",
        "",
        "| model | entity F1 | precision | recall | macro-F1 | tag accuracy | tags agree w/ teacher | params | weights "
        "| sent/s torch | sent/s ONNX | p50 / p95 ms torch | p50 / p95 ms ONNX |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in models:
        lines.append(
            f"| {name} | {_fmt(m['f1'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['macro_f1'])} "
            f"| {_fmt(m['token_accuracy'])} | {_fmt(m.get('agreement'))} | {_millions(m['params'])} | {_mb(m.get('size_bytes'))} "
            f"| {_fmt(m['throughput'], 1)} | {_fmt(m.get('throughput_onnx'), 1)} | {_latency(m.get('latency_ms'))} "
            f"| {_latency(m.get('latency_ms_onnx'))} |"
        )
    lines += _headline_lines(report, "f1", "sentences")
    lines += _decoding_lines(report, models)
    lines += _decision_lines(report, "sentences")
    types = sorted({t for _, m in models for t in m["per_type"]})
    lines += ["", "## Entity F1 per type", "",
              "| type | support | " + " | ".join(name for name, _ in models) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in models) + " |"]
    for typ in types:
        support = teacher["per_type"].get(typ, {}).get("support", student["per_type"].get(typ, {}).get("support"))
        cells = [_fmt(m["per_type"][typ]["f1"]) if typ in m["per_type"] else "–" for _, m in models]
        lines.append(f"| {typ} | {_fmt(support)} | " + " | ".join(cells) + " |")
    if "per_language" in teacher:
        lines += language_lines(report)
    lines += [
        *_measured_lines(report["environment"]),
        f"Throughput is pre-split sentences in, per-word logits out (word-piece tokenisation and alignment included) "
        f"over {report['throughput_rows']} test sentences at batch {report['batch_size']}; latency is "
        f"{report['latency_runs']} single-sentence calls.",
        "",
        "![entity F1 vs speed](f1_vs_speed.png)",
        "",
        "![entity F1 per type](f1_per_type.png)",
        "",
    ]
    if report.get("languages_summary"):
        lines += ["![entity F1 per language](f1_per_language.png)", ""]
    return "\n".join(lines)
