"""How well a multilingual student's trimmed vocabulary covers each language: per language, the
distinct teacher pieces its train + transfer text uses, the share of them the student kept, and the
share of piece occurrences they make up; with a multilingual_ner result, the Spearman correlation of
each language's retention with its student OOV share and with its teacher F1.

    python benchmarks/vocab_coverage.py --work-dir runs/bench_ner40 --seed 1 \\
        --result benchmarks/results/ner40.json --out benchmarks/results/ner40_vocab.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def coverage(pieces_by_lang: Mapping[str, Iterable[Sequence[int]]], kept: set[int]) -> dict[str, dict[str, float]]:
    """Per language: sentences, piece occurrences, distinct pieces, kept_distinct (share of the
    distinct pieces in `kept`) and kept_occurrences (share of the occurrences)."""
    out: dict[str, dict[str, float]] = {}
    for lang, sentences in pieces_by_lang.items():
        counts: Counter[int] = Counter()
        n = 0
        for ids in sentences:
            counts.update(ids)
            n += 1
        total = sum(counts.values())
        out[lang] = {
            "sentences": n,
            "occurrences": total,
            "distinct": len(counts),
            "kept_distinct": sum(1 for i in counts if i in kept) / len(counts) if counts else 0.0,
            "kept_occurrences": sum(v for i, v in counts.items() if i in kept) / total if total else 0.0,
        }
    return out


def correlations(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Spearman rho and p of per-language retention against student OOV share and teacher F1."""
    from scipy.stats import spearmanr

    langs = sorted(result["languages"])
    retention = [result["retention"][lang] for lang in langs]
    out = {}
    for name, xs in (("oov", [result["oov"][lang] for lang in langs]),
                     ("teacher_f1", [result["languages"][lang]["teacher"]["mean"] for lang in langs])):
        rho, p = spearmanr(xs, retention)
        out[name] = {"spearman_rho": float(rho), "p": float(p), "languages": len(langs)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True, help="a multilingual_ner work dir (data/, teacher/, student-s<seed>/)")
    p.add_argument("--seed", type=int, default=1, help="whose soft+repr student's vocabulary (default 1)")
    p.add_argument("--result", default=None, help="the benchmark's result JSON, for the correlations")
    p.add_argument("--out", required=True, help="JSON to write")
    args = p.parse_args(argv)

    import pandas as pd
    from transformers import AutoTokenizer

    work = Path(args.work_dir)
    vocab = json.loads((work / f"student-s{args.seed}" / "soft_repr" / "vocab.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(work / "teacher"))
    rows = pd.concat([pd.read_parquet(work / "data" / f"{split}.parquet", columns=["tokens", "lang"])
                      for split in ("train", "transfer")])
    pieces = {lang: tokenizer([list(t) for t in g.tokens], is_split_into_words=True,
                              add_special_tokens=False)["input_ids"]
              for lang, g in rows.groupby("lang")}
    summary: dict[str, Any] = {"work_dir": str(work), "student_vocab": len(vocab["teacher_ids"]),
                               "teacher_vocab": vocab["teacher_vocab_size"], "counted_on": "train + transfer",
                               "languages": coverage(pieces, set(vocab["teacher_ids"]))}
    if args.result:
        summary["correlations"] = correlations(json.loads(Path(args.result).read_text()))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    for lang, v in sorted(summary["languages"].items(), key=lambda kv: kv[1]["kept_occurrences"]):
        print(f"{lang:4s} {v['sentences']:6d} sentences {v['distinct']:6d} distinct pieces  "
              f"kept {v['kept_distinct']:.2f} of them, {v['kept_occurrences']:.3f} of occurrences")
    for name, c in summary.get("correlations", {}).items():
        print(f"retention vs {name}: Spearman {c['spearman_rho']:+.2f} (p {c['p']:.1e}, {c['languages']} languages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
