"""How well a multilingual student's trimmed vocabulary covers each language: per language, the
distinct teacher pieces its train + transfer text uses, the share of them the student kept, and the
share of piece occurrences they make up; with a multilingual_ner result, the Spearman correlation of
each language's retention with its student OOV share and with its teacher F1; with --sizes, the
test-split OOV share per language a vocabulary of each size would leave, its pieces ranked by
global frequency (what student.max_vocab does) or with every language's text weighted equally,
and with every piece seen kept.

    python benchmarks/vocab_coverage.py --work-dir runs/bench_ner40 --seed 1 \\
        --result benchmarks/results/ner40.json --sizes 39998,46000 --out benchmarks/results/ner40_vocab.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def count_pieces(pieces_by_lang: Mapping[str, Iterable[Sequence[int]]]) -> dict[str, Counter[int]]:
    """Occurrences of each piece per language."""
    out: dict[str, Counter[int]] = {}
    for lang, sentences in pieces_by_lang.items():
        c: Counter[int] = Counter()
        for ids in sentences:
            c.update(ids)
        out[lang] = c
    return out


def coverage(counts: Mapping[str, Counter[int]], kept: set[int], sentences: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per language (counts from count_pieces): sentences, piece occurrences, distinct pieces,
    kept_distinct (share of the distinct pieces in `kept`) and kept_occurrences (share of the occurrences)."""
    out: dict[str, dict[str, float]] = {}
    for lang, c in counts.items():
        total = sum(c.values())
        out[lang] = {
            "sentences": sentences[lang],
            "occurrences": total,
            "distinct": len(c),
            "kept_distinct": sum(1 for i in c if i in kept) / len(c) if c else 0.0,
            "kept_occurrences": sum(v for i, v in c.items() if i in kept) / total if total else 0.0,
        }
    return out


def ranked(counts: Mapping[str, Counter[int]], weighting: str) -> list[int]:
    """Every piece seen, best first: by total occurrences ("global"), or by the sum over languages
    of its share of that language's occurrences ("equal", each language's text weighing the same);
    ties by piece id."""
    score: Counter[int] | dict[int, float]
    if weighting == "global":
        score = Counter()
        for c in counts.values():
            score.update(c)
    elif weighting == "equal":
        score = {}
        for c in counts.values():
            total = sum(c.values())
            for i, v in c.items():
                score[i] = score.get(i, 0.0) + v / total
    else:
        raise ValueError(f"weighting {weighting!r}: global or equal")
    return [i for i, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))]


def oov_shares(test_counts: Mapping[str, Counter[int]], kept: set[int]) -> dict[str, float]:
    """Per language, the share of its test piece occurrences outside `kept`."""
    return {lang: 1 - sum(v for i, v in c.items() if i in kept) / sum(c.values()) for lang, c in test_counts.items()}


def what_if(counts: Mapping[str, Counter[int]], test_counts: Mapping[str, Counter[int]],
            sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Test OOV per language of each vocabulary size under both rankings, and of every piece seen."""
    rows = []
    orders = {w: ranked(counts, w) for w in ("global", "equal")}
    for size in sizes:
        for weighting, order in orders.items():
            rows.append({"pieces": size, "ranking": weighting, "oov": oov_shares(test_counts, set(order[:size]))})
    seen = orders["global"]
    rows.append({"pieces": len(seen), "ranking": "every piece seen", "oov": oov_shares(test_counts, set(seen))})
    for r in rows:
        shares = list(r["oov"].values())
        r.update(mean=sum(shares) / len(shares), max=max(shares), over_5_percent=sum(v > 0.05 for v in shares))
    return rows


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
    p.add_argument("--sizes", default=None, help="vocabulary sizes (teacher pieces, specials aside) to try, comma-separated")
    args = p.parse_args(argv)

    import pandas as pd
    from transformers import AutoTokenizer

    work = Path(args.work_dir)
    vocab = json.loads((work / f"student-s{args.seed}" / "soft_repr" / "vocab.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(work / "teacher"))

    def lang_pieces(frame):
        return {lang: tokenizer([list(t) for t in g.tokens], is_split_into_words=True, add_special_tokens=False)["input_ids"]
                for lang, g in frame.groupby("lang")}

    rows = pd.concat([pd.read_parquet(work / "data" / f"{split}.parquet", columns=["tokens", "lang"])
                      for split in ("train", "transfer")])
    counts = count_pieces(lang_pieces(rows))
    summary: dict[str, Any] = {"work_dir": str(work), "student_vocab": len(vocab["teacher_ids"]),
                               "teacher_vocab": vocab["teacher_vocab_size"], "counted_on": "train + transfer",
                               "languages": coverage(counts, set(vocab["teacher_ids"]), rows.groupby("lang").size().to_dict())}
    if args.sizes:
        test = pd.read_parquet(work / "data" / "test.parquet", columns=["tokens", "lang"])
        summary["what_if"] = what_if(counts, count_pieces(lang_pieces(test)), [int(x) for x in args.sizes.split(",")])
    if args.result:
        summary["correlations"] = correlations(json.loads(Path(args.result).read_text()))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    for lang, v in sorted(summary["languages"].items(), key=lambda kv: kv[1]["kept_occurrences"]):
        print(f"{lang:4s} {v['sentences']:6d} sentences {v['distinct']:6d} distinct pieces  "
              f"kept {v['kept_distinct']:.2f} of them, {v['kept_occurrences']:.3f} of occurrences")
    for r in summary.get("what_if", []):
        worst = max(r["oov"], key=r["oov"].get)
        print(f"{r['pieces']:7d} pieces, {r['ranking']:16s}: test OOV mean {r['mean']:.3f}, max {r['max']:.3f} ({worst}), "
              f"{r['over_5_percent']} languages over 5%")
    for name, c in summary.get("correlations", {}).items():
        print(f"retention vs {name}: Spearman {c['spearman_rho']:+.2f} (p {c['p']:.1e}, {c['languages']} languages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
