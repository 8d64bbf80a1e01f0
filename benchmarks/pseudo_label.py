"""Benchmark pseudo-labelling: the component's scoring path vs a naive loop, and its peak RSS.

    python benchmarks/pseudo_label.py --data ../shared/data/imdb/unsup.parquet --rows 300 \
        --out benchmarks/results/pseudo_label_imdb.json

On the same first N rows and the same teacher it measures examples/s of
  * component: components.pseudo_label.run (length-bucketed batches in sort windows, chunked
    streaming, logits + [CLS] representation of the last layer written to Parquet);
  * naive: fixed batches in file order, every batch padded to max_length, same outputs computed;
and the component's peak RSS at N and at 5N rows. Each measurement runs in its own subprocess,
so their RSS and warm-up do not mix. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_transfer(src: Path, rows: int, out_dir: Path, row_group_rows: int) -> Path:
    """First `rows` rows of any Parquet with a text column, as a transfer-set data dir."""
    import pyarrow.parquet as pq

    from components.lib.contracts import data

    pf = pq.ParquetFile(src)
    cols = ["text"] + (["id"] if "id" in pf.schema_arrow.names else [])
    table = pf.read(columns=cols).slice(0, rows)
    if len(table) < rows:
        raise SystemExit(f"{src}: only {len(table)} rows, {rows} asked")
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in cols else [str(i) for i in range(rows)]
    out_dir.mkdir(parents=True, exist_ok=True)
    data.write_table(data.transfer_table(ids, table.column("text").to_pylist()), out_dir / "transfer.parquet", row_group_rows)
    return out_dir


def make_teacher(ref: str, out: Path) -> Path:
    """A classifier dir: the given fine-tuned teacher, or the packaged encoder with a 2-way head
    (throughput does not depend on what the head learned)."""
    import torch

    from components.lib.models import teacher as T
    from components.lib.settings.config import PACKAGED_TEACHER, PipelineConfig
    from components.lib.tracking.runs import resolve_model_ref

    src = resolve_model_ref(PACKAGED_TEACHER if ref == "packaged" else ref, PipelineConfig())
    if T.head_is_trained(src):
        return Path(src)
    torch.manual_seed(0)
    model, tok = T.load_teacher(src, label_names=["neg", "pos"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def child_component(args) -> dict:
    from components import pseudo_label
    from components.lib.settings.config import PipelineConfig

    cfg = PipelineConfig.model_validate({
        "work_dir": args.work, "data": {"output_dir": args.data_dir},
        "transfer": {"teacher": args.teacher_dir, "batch_size": args.batch_size, "max_length": args.max_length,
                     "chunk_rows": args.chunk_rows, "sort_window": args.chunk_rows, "output_dir": args.work + "/pseudo",
                     "num_threads": args.threads},
        "tracking": {"enabled": False},
    })
    res = pseudo_label.run(cfg)
    return {"rows": res.rows, "ex_per_s": res.examples_per_s, "rss_mb": _peak_rss_mb(), "seconds": res.seconds}


def child_naive(args) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from components.lib.models import teacher as T

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = T.load_teacher(args.teacher_dir)
    texts = pq.read_table(Path(args.data_dir) / "transfer.parquet").column("text").to_pylist()
    logits, reprs = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), args.batch_size):
            enc = tok(texts[i : i + args.batch_size], padding="max_length", truncation=True,
                      max_length=args.max_length, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            logits.append(out.logits.numpy())
            reprs.append(out.hidden_states[-1][:, 0].numpy().astype(np.float16))
    seconds = time.perf_counter() - t0
    return {"rows": len(texts), "ex_per_s": len(texts) / seconds, "rss_mb": _peak_rss_mb(), "seconds": seconds}


def spawn(mode: str, args, data_dir: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data-dir", str(data_dir), "--teacher-dir", str(args.teacher_dir),
           "--work", str(work), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--chunk-rows", str(args.chunk_rows)] + (["--threads", str(args.threads)] if args.threads else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{mode:>10} rows={result['rows']:>6} {result['ex_per_s']:8.1f} ex/s  peak RSS {result['rss_mb']:7.1f} MB", flush=True)
    return result


def machine(threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="Parquet with a text column (e.g. ../shared/data/imdb/unsup.parquet)")
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--out", type=Path)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-rows", type=int, default=256, help="transfer.chunk_rows (= sort_window) of the component")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in both children (default torch's); 1 is steadier on a shared machine")
    p.add_argument("--teacher", default="packaged", help="'packaged' or a fine-tuned teacher dir / MLflow URI")
    p.add_argument("--child", choices=["component", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--teacher-dir", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = child_component if args.child == "component" else child_naive
        print(json.dumps(fn(args)))
        return
    if not (args.data and args.out):
        p.error("--data and --out are required")
    with tempfile.TemporaryDirectory(prefix="bench-pseudo-") as tmp:
        tmp = Path(tmp)
        args.teacher_dir = make_teacher(args.teacher, tmp / "teacher")
        small = make_transfer(args.data, args.rows, tmp / "small", row_group_rows=64)
        large = make_transfer(args.data, 5 * args.rows, tmp / "large", row_group_rows=64)
        t0 = time.perf_counter()
        comp = spawn("component", args, small, tmp / "w-small")
        naive = spawn("naive", args, small, tmp / "w-naive")
        comp_large = spawn("component", args, large, tmp / "w-large")
        result = {
            "rows": args.rows,
            "component_ex_per_s": round(comp["ex_per_s"], 2),
            "naive_ex_per_s": round(naive["ex_per_s"], 2),
            "speedup_vs_naive": round(comp["ex_per_s"] / naive["ex_per_s"], 3),
            "rss_small_mb": round(comp["rss_mb"], 1),
            "rss_large_mb": round(comp_large["rss_mb"], 1),
            "rss_ratio": round(comp_large["rss_mb"] / comp["rss_mb"], 3),
            "large_rows": 5 * args.rows,
            "component_large_ex_per_s": round(comp_large["ex_per_s"], 2),
            "naive_rss_mb": round(naive["rss_mb"], 1),
            "settings": {"data": str(args.data), "max_length": args.max_length, "batch_size": args.batch_size,
                         "chunk_rows": args.chunk_rows, "sort_window": args.chunk_rows, "teacher": args.teacher,
                         "outputs": "logits + last-layer [CLS] repr"},
            "machine": machine(args.threads),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
