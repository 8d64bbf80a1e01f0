"""Teacher vs distilled student on whatever device torch picks (CUDA if there is one), in one run:
examples/s at batch 256 on one paper_table unit's test reviews,

  text:    raw text in, tokenisation on the CPU included (what evaluate measures on the CPU);
  forward: the forward pass alone over pre-tokenised, pre-padded batches already on the device.

The teacher runs under the autocast pseudo-label scores with (bf16 on CUDA), the student in fp32.
Each figure is the best of 3 timed passes after one warm-up pass.

    python benchmarks/device_speed.py runs/paper_table/b500/s1 --out benchmarks/results/imdb_b500_h200_speed.json

The unit dir is what `paper_table.py` leaves: data/test.parquet (or eval_data/test.parquet),
teacher/, student/<mode>/. Never run by CI.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from components.lib.contracts import data
    from components.lib.core.torch_utils import length_batches
    from components.lib.models.student_io import load_student, pad_batch, tokenize_ids
    from components.lib.models.teacher import autocast_args, load_teacher, pick_device, score, token_lengths

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("unit", type=Path, help="a paper_table unit dir, e.g. runs/paper_table/b500/s1")
    p.add_argument("--mode", default="soft_repr", help="the student dir under <unit>/student (default soft_repr)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-length", type=int, default=128, help="the teacher's word pieces (the student reads its own)")
    p.add_argument("--rows", type=int, default=None, help="first N test reviews (default all)")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = p.parse_args(argv)

    test = next((f for f in (args.unit / "eval_data" / "test.parquet", args.unit / "data" / "test.parquet") if f.exists()), None)
    if test is None:
        raise SystemExit(f"{args.unit}: no eval_data/test.parquet or data/test.parquet")
    texts = pq.read_table(test, columns=["text"]).column("text").to_pylist()[: args.rows]
    device = pick_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bs = args.batch_size

    def timed(fn, reps: int = 3) -> float:
        fn()
        sync()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t)
        return len(texts) / best

    res: dict = {"unit": str(args.unit), "test_file": str(test), "rows": len(texts), "batch_size": bs,
                 "teacher_max_length": args.max_length, "device": device.type,
                 "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                 "cpu_count": os.cpu_count(), "torch": torch.__version__}

    model, tok = load_teacher(args.unit / "teacher")
    model.to(device)
    res["teacher_text_ex_per_s"] = timed(lambda: score(model, tok, texts, args.max_length, bs))
    enc, lengths = token_lengths(tok, texts, args.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    batches = [{k: v.to(device) for k, v in tok.pad([{k: enc[k][i] for k in keys} for i in idx], padding="longest",
                                                    return_tensors="pt").items()}
               for idx in length_batches(lengths, bs)]
    use_amp, amp_dtype = autocast_args(device)

    def teacher_forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            for b in batches:
                model(**b).logits.float()

    res["teacher_forward_ex_per_s"] = timed(teacher_forward)

    st = load_student(args.unit / "student" / args.mode)
    st.model.to(device).eval()
    res["student_max_length"] = st.max_length

    def student_text():
        seqs = [st.vocab.encode(s) for s in tokenize_ids(st.tokenizer, texts, st.max_length)]
        with torch.inference_mode():
            for idx in length_batches(np.array([len(s) for s in seqs]), bs):
                ids, mask = pad_batch([seqs[i] for i in idx])
                st.model.logits(ids.to(device), mask.to(device)).float().cpu()

    res["student_text_ex_per_s"] = timed(student_text)
    seqs = [st.vocab.encode(s) for s in tokenize_ids(st.tokenizer, texts, st.max_length)]
    padded = [tuple(t.to(device) for t in pad_batch([seqs[i] for i in idx]))
              for idx in length_batches(np.array([len(s) for s in seqs]), bs)]

    def student_forward():
        with torch.inference_mode():
            for ids, mask in padded:
                st.model.logits(ids, mask)

    res["student_forward_ex_per_s"] = timed(student_forward)
    res["speedup_text"] = res["student_text_ex_per_s"] / res["teacher_text_ex_per_s"]
    res["speedup_forward"] = res["student_forward_ex_per_s"] / res["teacher_forward_ex_per_s"]
    print(json.dumps(res, indent=1))
    if args.out:
        data.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
