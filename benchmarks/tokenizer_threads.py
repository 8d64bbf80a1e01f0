"""pseudo-label with the fast tokenizer on one thread vs on torch's threads (transfer.tokenizer_threads),
same teacher and rows, in one process: scoring examples/s of each and whether the tables are identical.

    python benchmarks/tokenizer_threads.py --data-dir runs/paper_table/b500/s1/data --teacher DIR \\
        --out benchmarks/results/pseudo_label_h200_tokenizer_threads.json

--data-dir holds a prepared transfer.parquet; --teacher a classifier dir (a fine-tuned teacher: a
checkpoint without a head would get a new random one per run). Runs, in order: 1 thread (warm-up:
CUDA and allocator start-up land here), default, 1 thread, default. Never run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the pipeline runs
os.environ.setdefault("DATA_DIR", str(ROOT.parent / "shared" / "data"))


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from components import pseudo_label as P
    from components.lib.contracts import data
    from components.lib.settings.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="a prepared data dir (transfer.parquet)")
    p.add_argument("--teacher", required=True, help="a fine-tuned classifier dir")
    p.add_argument("--config", default=str(ROOT / "configs" / "imdb.yaml"))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--work-dir", type=Path, default=Path("runs/tokenizer_threads"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    base = load_config(args.config).with_overrides({
        "work_dir": str(args.work_dir.resolve()), "data.output_dir": str(args.data_dir.resolve()),
        "transfer.teacher": args.teacher, "transfer.max_length": args.max_length, "tracking.enabled": False})
    runs = []
    for name, threads in (("1 thread (warm-up)", 1), ("default", None), ("1 thread", 1), ("default again", None)):
        out_dir = args.work_dir / f"run-{len(runs)}"
        cfg = base.with_overrides({"transfer.tokenizer_threads": threads, "transfer.output_dir": str(out_dir.resolve())})
        t = time.perf_counter()
        r = P.run(cfg)
        runs.append({"run": name, "tokenizer_threads": threads or torch.get_num_threads(), "rows": r.rows,
                     "scoring_ex_per_s": r.examples_per_s, "step_seconds": time.perf_counter() - t})
        print(runs[-1], flush=True)
    tables = [data.read_pseudo(args.work_dir / f"run-{i}" / "pseudo.parquet")[0] for i in range(len(runs))]
    logits = [data.fixed_list_to_numpy(t.column("teacher_logits")) for t in tables]
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "runs": runs,
           "speedup": runs[3]["scoring_ex_per_s"] / runs[2]["scoring_ex_per_s"],
           "labels_equal_1_vs_default": bool(np.array_equal(tables[2].column("teacher_label").to_numpy(),
                                                            tables[1].column("teacher_label").to_numpy())),
           "max_abs_logit_diff_1_vs_default": float(np.abs(logits[2] - logits[1]).max()),
           "max_abs_logit_diff_1_vs_1": float(np.abs(logits[2] - logits[0]).max())}
    print(json.dumps(res, indent=1))
    if args.out:
        data.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
