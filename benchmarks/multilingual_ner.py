"""XtremeDistil's multilingual claim on Universal NER: one multilingual teacher, one BiLSTM student
for five languages (Danish, Croatian, Portuguese, Swedish, Chinese), entity F1 kept per language,
at a fraction of the teacher's size and cost (Mukherjee & Hassan Awadallah, XtremeDistil, 2020);
or for forty (configs/ner40.yaml: MasakhaNER's 35 and UNER's 5, DATE and OTH mapped to O).

    python benchmarks/multilingual_ner.py                      # configs/uner.yaml, seeds 1,2,3
    python benchmarks/multilingual_ner.py --seeds 1 --set data.train_sentences=100   # a quicker look
    python benchmarks/multilingual_ner.py --config configs/ner40.yaml --seeds 1 \
        --work-dir runs/bench_ner40 --out benchmarks/results/ner40.json    # ~3-4 h on 2 CPU cores

The project's own steps, in order, with configs/uner.yaml plus overrides: prepare_data (one split,
data.seed) -> finetune_teacher (once; the model is registered in MLflow and every later step reads
it as models:/NAME/VERSION) -> pseudo_label (once) -> per seed: distill_student labels-only and
soft+repr (student.seed = seed) -> evaluate (teacher and both students on every language's test
split; sentences/s at batch 256, raw words in, tags out, tokenisation included, one process).

Resumable like paper_table.py: every step writes <work-dir>/done/<step>.json with its result and a
fingerprint of what it depends on; a rerun skips what still matches. The teacher is keyed by the
content of the train and dev tables (and its settings and dev decoding), not by how the transfer set
was made, so ablation rows that change only the transfer set or the student share one teacher;
pseudo-labels are keyed by the transfer table's content. --evaluate-set scores the same trained
models another way (e.g. constrained decoding of students whose dev scores were argmax). Writes --out
(benchmarks/results/uner.json): languages -> {lang: {teacher, baseline, student}} (mean, std over
seeds), retention_mean / retention_min (student / teacher F1 over languages), how many languages
keep >= 0.90 of the teacher's F1, the languages where the teacher itself fails (F1 < 0.5),
compression, speedup, the protocol (budgets, transfer and test rows per language, tag mapping),
each language's student OOV and test sentences, the student's vocabulary; <out>.md (the table,
weakest student first) and <out>.png (student vs teacher F1 per language: plot_languages.py); and
prints every target with PASS/MISS. Never run by CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from ner_targets import (  # noqa: E402
    COMPRESSION_MIN,
    RETENTION_EACH_MIN,
    RETENTION_MEAN_MIN,
    SPEEDUP_MIN,
    TEACHER_F1_MIN,
    TEACHER_FAILS_BELOW,
)
from paper_units import machine, mean_std, run_unit, section  # noqa: E402
from plot_languages import plot_languages  # noqa: E402

log = logging.getLogger("multilingual_ner")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "uner.yaml"), help="base pipeline config")
    p.add_argument("--data-dir", default=None, help="folder holding <lang>/{train,test}.iob2 (sets UNER_DIR; "
                   "default $UNER_DIR or ../shared/data/uner beside the repo)")
    p.add_argument("--ner-dir", default=None, help="folder holding MasakhaNER's <lang>/{train,test}.txt for "
                   "configs/ner40.yaml (sets NER_DIR; default $NER_DIR or ../shared/data/ner beside the repo)")
    p.add_argument("--seeds", default="1,2,3", help="student seeds, comma-separated")
    p.add_argument("--work-dir", default="runs/bench_uner", help="where every step writes")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "uner.json"), help="result JSON")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of every step (default torch's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set teacher.epochs=6 (repeatable)")
    p.add_argument("--evaluate-set", dest="eval_overrides", action="append", default=[], metavar="evaluate.KEY=VALUE",
                   help="an override of the evaluate step only: the same trained models scored another way, e.g. "
                        "--evaluate-set evaluate.decoding=constrained on models whose dev scores were argmax "
                        "(kept beside the plain evaluation: eval-s<seed>-<tag>, done/s<seed>-evaluate-<tag>.json)")
    args = p.parse_args(argv)
    for spec in args.eval_overrides:
        if not spec.startswith("evaluate.") or "=" not in spec:
            p.error(f"--evaluate-set {spec!r}: expected evaluate.KEY=VALUE (training settings go in --set)")
    return args


def typed_overrides(specs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings as with_overrides takes them (values read as YAML scalars, like --set)."""
    from components.lib.settings.raw import parse_set

    return dict(parse_set(spec) for spec in specs)


def evaluate_tag(eval_overrides: list[str]) -> str:
    """'' for the plain evaluation; else a short tag naming the overrides (directory and marker suffix)."""
    return "-" + hashlib.sha256("\n".join(sorted(eval_overrides)).encode()).hexdigest()[:8] if eval_overrides else ""


def base_config(args: argparse.Namespace, work: Path):
    from components.lib.settings.config import load_config

    if args.data_dir:
        os.environ["UNER_DIR"] = str(Path(args.data_dir).resolve())
    if args.ner_dir:
        os.environ["NER_DIR"] = str(Path(args.ner_dir).resolve())
    dirs = {f"{section}.output_dir": str(work / name) for section, name in
            (("data", "data"), ("teacher", "teacher"), ("transfer", "pseudo"), ("evaluate", "eval"), ("export", "export"))}
    threads = [f"{s}.num_threads={args.threads}" for s in ("teacher", "transfer", "student", "evaluate")] if args.threads else []
    cfg = load_config(args.config, [*threads, *args.overrides])
    return cfg.with_overrides({**dirs, "work_dir": str(work), "tracking.uri": cfg.tracking.uri or f"sqlite:///{work}/mlflow.db"})


def register_teacher(cfg, model_uri: str) -> str:
    """Register the fine-tuned teacher once; later steps read it as models:/NAME/VERSION."""
    import mlflow

    from components.lib.tracking import runs as tracking

    name = f"{cfg.export.model_name}-teacher"
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    version = mlflow.register_model(model_uri, name).version
    return f"models:/{name}/{version}"


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from components import distill_student, evaluate, finetune_teacher, prepare_data, pseudo_label
    from components.lib.contracts.files import sha256_file as content

    work = Path(args.work_dir).resolve()
    cfg = base_config(args, work)
    done = work / "done"
    data_key = {"data": section(cfg, "data")}
    records: dict[str, dict] = {}
    records["prepare-data"] = run_unit(done / "prepare-data.json", data_key, "prepare-data", lambda: prepare_data.run(cfg))
    splits = Path(records["prepare-data"]["result"]["data_dir"])
    # The teacher depends on the train and dev tables, not on how the transfer set was made: keyed
    # by their content, one teacher serves every ablation row that only changes the transfer set.
    teacher_key = {"train": content(splits / "train.parquet"), "dev": content(splits / "dev.parquet"),
                   "tags": json.loads((splits / "data_card.json").read_text())["label_names"],
                   "teacher": section(cfg, "teacher"), "decoding": cfg.evaluate.decoding}

    def finetune() -> dict:
        result = finetune_teacher.run(cfg).model_dump(mode="json")
        if not result["model_uri"]:
            raise SystemExit("the teacher was not logged to MLflow (tracking disabled?): nothing to register")
        return {**result, "registered": register_teacher(cfg, result["model_uri"])}

    teacher = run_unit(done / "finetune-teacher.json", teacher_key, "finetune-teacher", finetune)
    records["finetune-teacher"] = teacher
    cfg = cfg.with_overrides({"transfer.teacher": teacher["result"]["registered"]})
    pseudo_key = {**teacher_key, "transfer_rows": content(splits / "transfer.parquet"), "transfer": section(cfg, "transfer")}
    records["pseudo-label"] = run_unit(done / "pseudo-label.json", pseudo_key, "pseudo-label", lambda: pseudo_label.run(cfg))
    tag = evaluate_tag(args.eval_overrides)
    eval_overrides = typed_overrides(args.eval_overrides)
    for seed in map(int, args.seeds.split(",")):
        scfg = cfg.with_overrides({"student.seed": seed, "student.output_dir": str(work / f"student-s{seed}"),
                                   "evaluate.output_dir": str(work / f"eval-s{seed}{tag}")})
        for mode in ("labels-only", "soft+repr"):
            mcfg = scfg.with_overrides({"student.mode": mode})
            key = {**pseudo_key, "student": section(mcfg, "student")}
            records[f"s{seed}/{mode}"] = run_unit(done / f"s{seed}-{mode.replace('+', '_')}.json", key, f"[s{seed}] distill {mode}",
                                                  lambda mcfg=mcfg: distill_student.run(mcfg))

        ecfg = scfg.with_overrides(eval_overrides)

        def evaluate_seed(ecfg=ecfg) -> dict:
            dirs = {m: ecfg.student_dir(m) for m in ("labels-only", "soft+repr")}
            result = evaluate.run(ecfg, student_dirs=dirs)
            return {"result": result.model_dump(mode="json"), "report": json.loads(Path(result.report_path).read_text())}

        key = {**pseudo_key, "test": content(splits / "test.parquet"), "student": section(scfg, "student"),
               "evaluate": section(ecfg, "evaluate")}
        records[f"s{seed}/evaluate"] = run_unit(done / f"s{seed}-evaluate{tag}.json", key, f"[s{seed}] evaluate{tag}",
                                                evaluate_seed)
    return records


def protocol(cfg, records: dict[str, dict], config_path: str, test_decoding: str) -> dict[str, Any]:
    """What every number was measured under: the budgets, where dev and test come from, the
    transfer and test sentences per language (from prepare-data's card), the tag mapping."""
    card = json.loads((Path(records["prepare-data"]["result"]["data_dir"]) / "data_card.json").read_text())
    d = cfg.data
    return {
        "config": config_path, "languages": len(d.languages or []), "teacher": cfg.teacher.model,
        "train_sentences_per_language": d.train_sentences, "dev_sentences_per_language": d.dev_sentence_budget,
        "dev": "drawn from each language's train split (never its official dev split)",
        "test": "each language's official test split, read only by evaluate",
        "transfer": "the rest of every train split, tags dropped" + (f", capped at {d.max_transfer_rows} over all languages"
                                                                     if d.max_transfer_rows else ""),
        "label_map": d.label_map, "tags": card["label_names"], "rows": card["rows"],
        "per_language": {split: card.get("languages", {}).get(split, {}) for split in ("train", "dev", "test", "transfer")},
        "dropped_empty_words": {lang: sum(v.get(part, {}).get("dropped_empty_words", 0) for part in ("train", "test"))
                                for lang, v in card.get("read", {}).items()},
        "decoding": {"dev_scores": cfg.evaluate.decoding, "test": test_decoding},
        "seed": d.seed, "student_seeds": sorted(int(k[1:].split("/")[0]) for k in records if k.endswith("/evaluate")),
    }


def epochs_used(cfg, records: dict[str, dict]) -> dict[str, Any]:
    """How many epochs the teacher and every student stage ran against its cap, and whether patience
    or the cap ended it: a stage that ran its whole cap was budget-bound (issue: schedules that are
    not). From the teacher's result and each student's metrics.json `phases`."""
    t = records["finetune-teacher"]["result"]
    out: dict[str, Any] = {"teacher": {"epochs": t["epochs_run"], "cap": cfg.teacher.epochs, "best_epoch": t["best_epoch"],
                                       "ended_by": "patience" if t["epochs_run"] < cfg.teacher.epochs else "cap"}}
    caps = {"repr": cfg.student.repr_epochs, "soft": cfg.student.soft_epochs, "hard": cfg.student.soft_epochs,
            "labels": cfg.student.label_epochs}
    for key, rec in sorted(records.items()):
        if "/" not in key or key.endswith("/evaluate"):
            continue
        metrics = json.loads((Path(rec["result"]["student_dir"]) / "metrics.json").read_text())
        out[key] = [{"stage": ph["name"], "epochs": ph["epochs"], "cap": caps.get(ph["target"]),
                     "ended_by": "cap" if ph["epochs"] >= caps.get(ph["target"], 10**9) else "patience"}
                    for ph in metrics.get("phases", [])]
    return out


def pooled_rounds(reports: list[dict], key: str) -> dict[str, Any] | None:
    """Median, min and max of the student/teacher ratio over every timing round of every report."""
    rounds = [r for rep in reports for r in (rep.get(key) or {}).get("rounds", [])]
    if not rounds:
        return None
    return {"median": statistics.median(rounds), "min": min(rounds), "max": max(rounds), "n": len(rounds)}


def summarise(records: dict[str, dict]) -> dict[str, Any]:
    """Per language teacher / baseline / student F1 as mean and std over seeds, and the targets."""
    reports = [r["result"]["report"] for k, r in sorted(records.items()) if k.endswith("/evaluate")]
    langs = reports[0]["languages"]
    models = {"teacher": "teacher", "baseline": "baseline", "student": "student"}
    languages = {lang: {name: mean_std([rep[key]["per_language"][lang]["f1"] for rep in reports]) for name, key in models.items()}
                 for lang in langs}
    retention = {lang: (v["student"]["mean"] / v["teacher"]["mean"] if v["teacher"]["mean"] else 0.0) for lang, v in languages.items()}
    macro = {name: mean_std([sum(rep[key]["per_language"][lang]["f1"] for lang in langs) / len(langs) for rep in reports])
             for name, key in models.items()}
    summary = {
        "languages": languages,
        "macro_f1": macro,
        "retention": retention,
        "retention_mean": sum(retention.values()) / len(retention),
        "retention_min": min(retention.values()),
        "retention_at_least_0_90": {"count": sum(r >= RETENTION_EACH_MIN for r in retention.values()), "of": len(retention),
                                    "below": sorted(lang for lang, r in retention.items() if r < RETENTION_EACH_MIN)},
        "teacher_fails": sorted(lang for lang, v in languages.items() if v["teacher"]["mean"] < TEACHER_FAILS_BELOW),
        "baseline_beaten": {lang: v["student"]["mean"] > v["baseline"]["mean"] for lang, v in languages.items()},
        "compression": reports[0]["compression"],
        "params": reports[0]["params"],
        "speedup": mean_std([rep["speedup"] for rep in reports]),
        "speedup_onnx": mean_std([rep["speedup_onnx"] for rep in reports]),
        # every interleaved timing round of every seed: what a noisy machine's speed figure should be read from
        "speedup_rounds": pooled_rounds(reports, "speedup_rounds"),
        "speedup_onnx_rounds": pooled_rounds(reports, "speedup_onnx_rounds"),
        "throughput": {name: mean_std([rep["throughput"][name] for rep in reports]) for name in ("teacher", "student")},
        "seeds": len(reports),
        "test_sentences": {lang: reports[0]["teacher"]["per_language"][lang]["sentences"] for lang in langs},
        # the share of each language's test pieces outside the student's trimmed vocabulary (mean over seeds)
        "oov": {lang: sum(rep["student"].get("oov_rate_per_language", {}).get(lang, 0.0) for rep in reports) / len(reports)
                for lang in langs},
        "vocab": reports[0]["student"].get("vocab"),
    }
    summary["targets"] = [
        {"target": "teacher macro entity F1 over languages", "value": macro["teacher"]["mean"], "min": TEACHER_F1_MIN},
        {"target": "retention mean over languages", "value": summary["retention_mean"], "min": RETENTION_MEAN_MIN},
        {"target": "retention of every language", "value": summary["retention_min"], "min": RETENTION_EACH_MIN},
        {"target": "compression (teacher / student parameters)", "value": summary["compression"], "min": COMPRESSION_MIN},
        {"target": "speed-up (batch-256 sentences/s, student / teacher; median of every timing round)",
         "value": (summary["speedup_rounds"] or {}).get("median", summary["speedup"]["mean"]), "min": SPEEDUP_MIN},
        {"target": "student beats the labels-only baseline in every language",
         "value": float(all(summary["baseline_beaten"].values())), "min": 1.0},
    ]
    for t in summary["targets"]:
        t["pass"] = t["value"] >= t["min"]
    return summary


def markdown(summary: dict[str, Any]) -> str:
    fmt = lambda m: f"{m['mean']:.3f} ± {m['std']:.3f}"  # noqa: E731
    oov, sent = summary.get("oov") or {}, summary.get("test_sentences") or {}
    lines = ["| language | teacher F1 | baseline F1 | student F1 | retention | student OOV | test sentences |",
             "| --- | --- | --- | --- | --- | ---: | ---: |"]
    for lang, v in sorted(summary["languages"].items(), key=lambda kv: (kv[1]["student"]["mean"], kv[0])):  # weakest first
        lines.append(f"| {lang} | {fmt(v['teacher'])} | {fmt(v['baseline'])} | {fmt(v['student'])} | "
                     f"{summary['retention'][lang]:.3f} | {oov.get(lang, 0.0):.3f} | {sent.get(lang, 0)} |")
    m = summary["macro_f1"]
    mean_oov = sum(oov.values()) / len(oov) if oov else 0.0
    lines.append(f"| macro | {fmt(m['teacher'])} | {fmt(m['baseline'])} | {fmt(m['student'])} | {summary['retention_mean']:.3f} | "
                 f"{mean_oov:.3f} | {sum(sent.values())} |")
    if summary.get("vocab"):
        vc, params = summary["vocab"], summary["params"]
        lines += ["", f"Student vocabulary: {vc['size']:,} pieces of the teacher's {vc['teacher_vocab_size']:,} (student.max_vocab "
                  f"{vc['max_vocab']}, min_count {vc['min_count']}, counted on {vc['counted_on']}); student "
                  f"{params['student']:,} parameters, teacher {params['teacher']:,}."]
    rounds = [(name, r) for name, key in (("torch", "speedup_rounds"), ("ONNX", "speedup_onnx_rounds")) if (r := summary.get(key))]
    pooled = "; ".join(f"{name} {r['median']:.1f}x ({r['min']:.1f}-{r['max']:.1f})" for name, r in rounds)
    lines += ["", f"Compression {summary['compression']:.1f}x; speed-up {fmt(summary['speedup'])}x "
              f"(ONNX {fmt(summary['speedup_onnx'])}x); {summary['seeds']} seeds."
              + (f" Over all {rounds[0][1]['n']} interleaved timing rounds, median (min-max): {pooled}." if pooled else ""),
              f"Retention >= 0.90 in {summary['retention_at_least_0_90']['count']} of "
              f"{summary['retention_at_least_0_90']['of']} languages; teacher F1 < {TEACHER_FAILS_BELOW} in "
              f"{', '.join(summary['teacher_fails']) or 'none'}.", ""]
    lines += [f"- {'PASS' if t['pass'] else 'MISS'} {t['target']}: {t['value']:.3f} (target >= {t['min']})" for t in summary["targets"]]
    if summary.get("epochs_used"):
        used = summary["epochs_used"]
        te = used["teacher"]
        lines += ["", f"Epochs used / cap: teacher {te['epochs']}/{te['cap']} (best {te['best_epoch']}, ended by {te['ended_by']})"]
        lines += [f"- {key}: " + ", ".join(f"{st['stage']} {st['epochs']}/{st['cap']}" + (" cap" if st["ended_by"] == "cap" else "")
                                           for st in stages) for key, stages in used.items() if key != "teacher"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from components.lib.contracts import data

    records = run_all(args)
    summary = summarise(records)
    cfg = base_config(args, Path(args.work_dir).resolve())
    test_decoding = cfg.with_overrides(typed_overrides(args.eval_overrides)).evaluate.decoding
    summary["protocol"] = protocol(cfg, records, args.config, test_decoding)
    summary["epochs_used"] = epochs_used(cfg, records)
    reports = [r["result"]["report"] for k, r in sorted(records.items()) if k.endswith("/evaluate")]
    out = Path(args.out)
    data.write_json(out, {**summary, "command": " ".join(["python", "benchmarks/multilingual_ner.py", *(argv or sys.argv[1:])]),
                          "machine": machine(reports), "wall_s": {k: r["wall_s"] for k, r in records.items()},
                          "teacher_model": records["finetune-teacher"]["result"]["registered"],
                          "teacher_run": records["finetune-teacher"]["result"]["mlflow_run_id"]})
    out.with_suffix(".md").write_text(markdown(summary))
    plot_languages(summary, out.with_suffix(".png"), (1.0, RETENTION_MEAN_MIN, RETENTION_EACH_MIN), TEACHER_FAILS_BELOW)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
