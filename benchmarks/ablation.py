"""The five-language ablation: what each lever adds to the student's retention, one row per lever,
from result files of benchmarks/multilingual_ner.py runs that share one teacher recipe.

    python benchmarks/ablation.py \
        --row "today's recipe=benchmarks/results/uner.json" \
        --row "+ unlabeled text=runs/bench_unlabeled/uner.json" ... \
        [--into benchmarks/results/uner.json]

Each row: macro teacher / student F1, retention mean and min over languages, compression, speed-up,
seeds, and the retention it adds over the row before. A row whose teacher is another model than the
first row's (its MLflow run, `teacher_run`; where a result lacks it, a teacher F1 more than 0.005
away) is flagged (`same_teacher: false`): retention must not come from a weaker teacher. The same
teacher scored another way (e.g. decoded constrained) is marked with that decoding instead. `--into`
writes the rows under the `ablation` key (or --key) of that result file (its other keys
untouched); the speed-up is the median of every interleaved timing round where the result pools
them (min-max beside it); the table is printed as Markdown. Never run by CI; reads only the files named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAME_TEACHER_TOL = 0.005


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", action="append", required=True, metavar="LABEL=RESULT.json",
                   help="a lever and the multilingual_ner.py result measuring it (in order; repeatable)")
    p.add_argument("--into", default=None, help="result JSON that gets the rows under --key")
    p.add_argument("--key", default="ablation", help="the key of --into the rows go under (default ablation)")
    return p.parse_args(argv)


def row(label: str, result: dict[str, Any], source: str) -> dict[str, Any]:
    macro = result["macro_f1"]
    return {"lever": label, "source": source, "command": result.get("command"), "seeds": result["seeds"],
            "teacher_f1": macro["teacher"]["mean"], "student_f1": macro["student"]["mean"],
            "baseline_f1": macro["baseline"]["mean"], "retention_mean": result["retention_mean"],
            "retention_min": result["retention_min"], "compression": result["compression"],
            # the median of every interleaved timing round where the result pools them (else the seeds' mean)
            "speedup": (result.get("speedup_rounds") or {}).get("median", result["speedup"]["mean"]),
            "speedup_range": [r["min"], r["max"]] if (r := result.get("speedup_rounds")) else None,
            "params_student": result["params"]["student"],
            "teacher_run": result.get("teacher_run"),
            "decoding": result.get("protocol", {}).get("decoding", {}).get("test")}


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the retention each adds over the one before and whether the teacher is the first row's."""
    first = rows[0]
    out = []
    for i, r in enumerate(rows):
        same = (r["teacher_run"] == first["teacher_run"] if r.get("teacher_run") and first.get("teacher_run")
                else abs(r["teacher_f1"] - first["teacher_f1"]) <= SAME_TEACHER_TOL)
        out.append({**r, "adds": None if i == 0 else r["retention_mean"] - rows[i - 1]["retention_mean"], "same_teacher": same})
    return out


def spread(r: dict[str, Any]) -> str:
    lo_hi = r.get("speedup_range")
    return f" ({lo_hi[0]:.1f}-{lo_hi[1]:.1f})" if lo_hi else ""


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| lever | teacher F1 | student F1 | retention (mean / min) | adds | compression | speed-up | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        adds = "" if r["adds"] is None else f"{r['adds']:+.3f}"
        flag = (" (other teacher)" if not r["same_teacher"] else
                f" ({r['decoding']} decoding)" if r.get("decoding") and r["decoding"] != rows[0].get("decoding") else "")
        lines.append(f"| {r['lever']} | {r['teacher_f1']:.3f}{flag} | {r['student_f1']:.3f} | {r['retention_mean']:.3f} / "
                     f"{r['retention_min']:.3f} | {adds} | {r['compression']:.1f}x | {r['speedup']:.1f}x{spread(r)} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from components.lib.contracts import data

    rows = []
    for spec in args.row:
        label, sep, path = spec.rpartition("=")  # a label may hold "=" (a --set), a path seldom
        if not sep or not label.strip():
            raise SystemExit(f"--row {spec!r}: expected LABEL=RESULT.json")
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"{path}: cannot read a result ({err})") from None
        rows.append(row(label.strip(), result, path))
    rows = table(rows)
    if args.into:
        into = Path(args.into)
        data.write_json(into, {**json.loads(into.read_text()), args.key: rows})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
