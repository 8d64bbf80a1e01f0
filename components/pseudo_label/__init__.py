"""pseudo-label-transfer-set: the teacher annotates the unlabeled transfer set.

Streams <data_dir>/transfer.parquet (one row range per shard, read chunk by chunk, so memory
does not grow with the transfer set), scores length-bucketed batches inside windows of
`sort_window` rows, and writes per row: hard label, logits (float32) and the chosen layer's
[CLS]/mean representation (float16).

task: token-classification reads the transfer-tokens contract and writes pseudo-tokens rows: per
word the teacher saw (its first sub-piece; `tokens` is cut to the words inside max_length) the
tag, logits (float32) and the chosen layer's hidden state (float16). Same shards, chunks, resume
and merge; the metadata also counts words_total / words_covered (summed over chunks and shards).

run() below is the step for every task; the module TASKS names for cfg.task (sequence.py,
tokens.py: the PseudoHooks of hooks.py) reads the transfer rows, loads the teacher, scores a chunk
and builds its table. The shards, chunk fingerprints, streaming writes and the merge are
lib/contracts/shards.py's.

Layout under cfg.pseudo_dir:
  chunks/shard-i-of-n/rows-<start>-<stop>.parquet   resumable work units (atomic, removed at the end)
  shards/shard-{i:05d}-of-{n:05d}.parquet           this shard's rows, in transfer order
  pseudo.parquet                                    the merged table (num_shards == 1, or `merge`)
A rerun (after kill -9) reuses every chunk whose fingerprint (teacher digest + every setting that
changes a number, the device type and the teacher's compute dtype there) matches, and writes the
same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from components.lib.contracts import data
from components.lib.contracts.pseudo_values import check_pseudo_values
from components.lib.contracts.shards import (
    COUNT_KEYS,
    MergeResult,
    counts,
    fingerprint,
    merge,
    release_memory,
    shard_file,
    shard_range,
    stored_fingerprint,
    sum_counts,
    write_stream,
)
from components.lib.core.env import scoped_env
from components.lib.core.errors import DataError, UserError
from components.lib.core.task import Task
from components.lib.models import teacher as T
from components.lib.settings.cli import add_config_args, run_guarded, step_main
from components.lib.settings.config import PipelineConfig, load_config
from components.lib.tracking import runs as tracking
from components.pseudo_label import sequence, tokens
from components.pseudo_label.hooks import PseudoHooks

log = logging.getLogger("distilflow.pseudo_label")
STEP = "pseudo-label-transfer-set"
PSEUDO_FILE = "pseudo.parquet"
TASKS: dict[Task, PseudoHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}


class PseudoLabelResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    pseudo_dir: str
    shard_file: str
    merged_file: str | None
    shard_index: int
    num_shards: int
    rows: int
    chunks: int
    chunks_reused: int
    max_rows_held: int
    seconds: float
    examples_per_s: float
    teacher_digest: str
    mlflow_run_id: str | None
    # token classification only: words in the shard's rows, words the teacher saw, words cut by max_length
    words_total: int | None = None
    words_covered: int | None = None
    words_cut: int | None = None


def tokenizer_env(threads: int) -> dict[str, str]:
    """The environment that lets the fast tokenizer encode a chunk on `threads` threads. The pipeline
    keeps TOKENIZERS_PARALLELISM=false (a process that forks after the tokenizer used threads can
    deadlock); the scoring loop forks nothing, and on a GPU node the one-thread tokenizer, not the
    teacher, bounds it (H200: 1,340 vs 40,538 examples/s for the forward alone). RAYON_NUM_THREADS
    sizes the tokenizer's pool when it is first used in the process."""
    return {"TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false", "RAYON_NUM_THREADS": str(threads)}


def check_scores(chunk: pa.Table, transfer_path: Path, a: int, b: int, num_labels: int, teacher: str) -> None:
    """The same checks every reader makes (labels in range, logits and representations finite), on
    the teacher's output before it is written: a half-precision overflow or a broken checkpoint stops
    here, naming the transfer row, instead of at the merge or in distill-student."""
    try:
        check_pseudo_values(chunk, transfer_path, {"num_labels": num_labels}, row0=a)
    except DataError as err:
        raise DataError(f"{err} in the teacher's output ({teacher}); rows {a}..{b - 1} not written, "
                        "earlier chunks kept") from None


@dataclass(frozen=True)
class Shard:
    """One shard's rows [start, stop) of the transfer set, cut into chunks, and where they go."""

    transfer_path: Path
    start: int
    stop: int
    bounds: list[tuple[int, int]]  # the chunks' row ranges
    chunk_dir: Path
    out_file: Path
    key: str  # the fingerprint every chunk and the shard file carry
    meta: dict  # the shard's table metadata

    def chunk(self, a: int, b: int) -> Path:
        return self.chunk_dir / f"rows-{a:012d}-{b:012d}.parquet"


class Scoring(NamedTuple):
    chunks_reused: int
    max_rows_held: int
    scored_rows: int
    seconds: float  # scoring only (tokenizer + forward)


def run(cfg: PipelineConfig) -> PseudoLabelResult:
    hooks = TASKS[cfg.task]
    tc = cfg.transfer
    t0 = time.perf_counter()
    if tc.num_threads and not torch.cuda.is_available():
        torch.set_num_threads(tc.num_threads)
    transfer_path = cfg.data_dir / "transfer.parquet"
    total = hooks.transfer_rows(transfer_path)
    start, stop = shard_range(total, tc.shard_index, tc.num_shards)
    src = tracking.resolve_teacher(cfg)
    model, tokenizer = hooks.load_teacher(src)
    device = T.pick_device()
    model.to(device)
    names = T.label_names_of(model)
    layer = tc.layer if tc.keep_repr else None
    hidden = model.config.hidden_size if layer is not None else None
    meta = hooks.describe({"teacher_digest": T.weights_digest(src, model), "layer": layer,
                           "pooling": tc.pooling if tc.keep_repr else None, "label_names": names,
                           "max_length": tc.max_length, "hidden_size": model.config.hidden_size,
                           **({"keep_tail": cfg.transfer_keep_tail} if cfg.transfer_keep_tail else {})})
    key_dtype = T.compute_dtype(model, device)
    scorer = f"{src}, {key_dtype} on {device.type}"  # named when its output fails the checks
    tok_threads = tc.tokenizer_threads or torch.get_num_threads()
    key = fingerprint(meta, cfg, transfer_path, start, stop, total, device=device.type, dtype=key_dtype)
    shard = Shard(transfer_path, start, stop,
                  bounds=[(a, min(a + tc.chunk_rows, stop)) for a in range(start, stop, tc.chunk_rows)],
                  chunk_dir=cfg.pseudo_dir / "chunks" / f"shard-{tc.shard_index}-of-{tc.num_shards}",
                  out_file=shard_file(cfg.pseudo_dir, tc.shard_index, tc.num_shards), key=key,
                  meta={**meta, "shard_index": tc.shard_index, "num_shards": tc.num_shards, "row_start": start,
                        "row_stop": stop, "fingerprint": key})
    schema = hooks.schema(len(names), hidden, transfer_path)  # metadata (and counts) added by _write_shard

    with tracking.step_run(cfg, STEP) as tr:
        tr.log_params({"transfer": tc.model_dump(mode="json"), "teacher_ref": str(tc.teacher or cfg.teacher_dir),
                       "rows": stop - start, "teacher_digest": meta["teacher_digest"], "device": str(device),
                       "tokenizer_threads": tok_threads})
        scoring = Scoring(len(shard.bounds), 0, 0, 0.0)
        if stored_fingerprint(shard.out_file) != key:  # else this shard is already complete
            scoring = _score_chunks(cfg, hooks, shard, model, tokenizer, layer, len(names), scorer, tok_threads)
            _write_shard(cfg, hooks, shard, schema)
        merged = None
        if tc.num_shards == 1:
            merged = cfg.pseudo_dir / PSEUDO_FILE
            merge([shard.out_file], transfer_path, merged, cfg.data.row_group_rows, table=hooks.TABLE)
        return _finish(cfg, tr, shard, scoring, merged, time.perf_counter() - t0, tok_threads)


def _score_chunks(cfg: PipelineConfig, hooks: PseudoHooks, shard: Shard, model, tokenizer, layer: int | None,
                 num_labels: int, scorer: str, tok_threads: int) -> Scoring:
    """Score and write every chunk of the shard not already on disk with its fingerprint (scorer:
    the teacher, named when its output fails the checks)."""
    tc = cfg.transfer
    shard.chunk_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard.chunk_dir.glob(".*.tmp"):  # torn writes of a killed run
        stale.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    reused, max_held, scored_rows, scoring_s = 0, 0, 0, 0.0
    desc = f"pseudo-label shard {tc.shard_index}/{tc.num_shards}"
    with tqdm(total=shard.stop - shard.start, unit="ex", desc=desc) as bar:
        for a, b in shard.bounds:
            path = shard.chunk(a, b)
            if stored_fingerprint(path) == shard.key:
                reused += 1
                bar.update(b - a)
                continue
            # One chunk of rows in memory at a time, read row group by row group.
            table = pa.concat_tables(list(hooks.read_rows(shard.transfer_path, a, b)))
            max_held = max(max_held, len(table))
            ts = time.perf_counter()
            with scoped_env(**tokenizer_env(tok_threads)):
                logits, reprs = hooks.score_chunk(model, tokenizer, table, cfg, layer, bar.update)
            scoring_s += time.perf_counter() - ts
            scored_rows += len(table)
            bar.set_postfix(ex_per_s=f"{scored_rows / max(scoring_s, 1e-9):.1f}")
            chunk = hooks.chunk_table(table, logits, reprs, shard.meta, shard.transfer_path)
            check_scores(chunk, shard.transfer_path, a, b, num_labels, scorer)
            data.write_table(chunk, path, row_group_rows=cfg.data.row_group_rows)
            del table, logits, reprs, chunk
            release_memory()
    return Scoring(reused, max_held, scored_rows, scoring_s)


def _write_shard(cfg: PipelineConfig, hooks: PseudoHooks, shard: Shard, schema: pa.Schema) -> None:
    """The shard file from its chunk files (its metadata: the shard's, with the chunks' counts summed);
    then the chunks go."""
    chunk_files = [shard.chunk(a, b) for a, b in shard.bounds]
    counts = dict.fromkeys(hooks.COUNTS, 0) | sum_counts(chunk_files)
    schema = data.with_metadata(schema, hooks.TABLE, {**shard.meta, **counts})
    write_stream((pq.read_table(f) for f in chunk_files), schema, shard.out_file, cfg.data.row_group_rows)
    for f in chunk_files:  # the shard file now holds them; keep the artifact small
        f.unlink()
    for d in (shard.chunk_dir, shard.chunk_dir.parent):
        try:
            d.rmdir()
        except OSError:  # not empty: another shard's chunks share the dir
            pass


def _finish(cfg: PipelineConfig, tr: tracking.StepTracker, shard: Shard, scoring: Scoring,
            merged: Path | None, seconds: float, tok_threads: int) -> PseudoLabelResult:
    """The shard's manifest, metrics, log lines and result."""
    tc = cfg.transfer
    rows = shard.stop - shard.start
    ex_s = scoring.scored_rows / scoring.seconds if scoring.seconds else 0.0
    words = counts(shard.out_file)  # {} for classification
    if words:
        words["words_cut"] = words["words_total"] - words["words_covered"]
    data.write_json(cfg.pseudo_dir / f"manifest-shard-{tc.shard_index:05d}-of-{tc.num_shards:05d}.json", {
        **shard.meta, "rows": rows, "chunks": len(shard.bounds), "chunks_reused": scoring.chunks_reused,
        "scored_rows": scoring.scored_rows, "examples_per_s": ex_s, "seconds": seconds,
        "shard_file": shard.out_file.name, "tokenizer_threads": tok_threads, **words})
    tr.log_metrics({"rows": rows, "scored_rows": scoring.scored_rows, "examples_per_s": ex_s, "seconds": seconds,
                    "chunks_reused": scoring.chunks_reused, **words})
    log.info("pseudo-labelled shard %d/%d: %d rows (%d scored, %d/%d chunks reused) in %.1f s, %.1f examples/s -> %s",
             tc.shard_index, tc.num_shards, rows, scoring.scored_rows, scoring.chunks_reused, len(shard.bounds),
             seconds, ex_s, shard.out_file)
    if words.get("words_cut"):
        log.warning("%d of %d words (%.2f%%) lie beyond transfer.max_length=%d: their rows keep only the words the "
                    "teacher saw", words["words_cut"], words["words_total"],
                    100 * words["words_cut"] / max(words["words_total"], 1), tc.max_length)
    return PseudoLabelResult(
        pseudo_dir=str(cfg.pseudo_dir), shard_file=str(shard.out_file), merged_file=str(merged) if merged else None,
        shard_index=tc.shard_index, num_shards=tc.num_shards, rows=rows, chunks=len(shard.bounds),
        chunks_reused=scoring.chunks_reused, max_rows_held=scoring.max_rows_held, seconds=seconds,
        examples_per_s=ex_s, teacher_digest=shard.meta["teacher_digest"], mlflow_run_id=tr.run_id, **words)


def merge_run(cfg: PipelineConfig, shard_dirs: list[Path]) -> MergeResult:
    """The kfp merge task: each entry is one shard task's pseudo_dir (or a shard file)."""
    files: list[Path] = []
    for d in map(Path, shard_dirs):
        found = [d] if d.is_file() else sorted((d / "shards").glob("shard-*.parquet"))
        if not found:
            raise UserError(f"{d}: no shards/shard-*.parquet inside (not a pseudo-label shard output)")
        files += found
    out = cfg.pseudo_dir / PSEUDO_FILE
    result = merge(files, cfg.data_dir / "transfer.parquet", out, cfg.data.row_group_rows,
                   table=TASKS[cfg.task].TABLE)
    words = {k: v for k in COUNT_KEYS if (v := getattr(result, k)) is not None}
    data.write_json(cfg.pseudo_dir / "manifest.json", {"rows": result.rows, "shards": [str(f) for f in files], **words})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else None
    import sys

    args_in = argv if argv is not None else sys.argv[1:]
    if args_in and args_in[0] == "merge":
        parser = argparse.ArgumentParser(description="Merge pseudo-label shards into <pseudo_dir>/pseudo.parquet.")
        add_config_args(parser)
        parser.add_argument("--shard-dir", action="append", required=True, help="a shard's pseudo_dir (repeatable)")
        args = parser.parse_args(args_in[1:])
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        return run_guarded(lambda: merge_run(load_config(args.config, args.overrides), [Path(d) for d in args.shard_dir]))
    return step_main(run, "Pseudo-label the transfer set with the teacher (logits, labels, representations).", args_in)


if __name__ == "__main__":
    raise SystemExit(main())
