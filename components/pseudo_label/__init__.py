"""pseudo-label-transfer-set: the teacher annotates the unlabeled transfer set.

Streams <data_dir>/transfer.parquet (one row range per shard, read chunk by chunk, so memory
does not grow with the transfer set), scores length-bucketed batches inside windows of
`sort_window` rows, and writes per row: hard label, logits (float32) and the chosen layer's
[CLS]/mean representation (float16).

task: token-classification reads the transfer-tokens contract and writes pseudo-tokens rows: per
word the teacher saw (its first sub-piece; `tokens` is cut to the words inside max_length) the
tag, logits (float32) and the chosen layer's hidden state (float16). Same shards, chunks, resume
and merge; the metadata also counts words_total / words_covered (summed over chunks and shards).

Layout under cfg.pseudo_dir:
  chunks/shard-i-of-n/rows-<start>-<stop>.parquet   resumable work units (atomic, removed at the end)
  shards/shard-{i:05d}-of-{n:05d}.parquet           this shard's rows, in transfer order
  pseudo.parquet                                    the merged table (num_shards == 1, or `merge`)
A rerun (after kill -9) reuses every chunk whose fingerprint (teacher digest + every setting that
changes a number) matches, and writes the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from components.lib import data, tracking
from components.lib import teacher as T
from components.lib.cli import add_config_args, run_guarded, step_main
from components.lib.config import PipelineConfig, load_config
from components.lib.errors import DataError, UserError

log = logging.getLogger("distilflow.pseudo_label")
STEP = "pseudo-label-transfer-set"
PSEUDO_FILE = "pseudo.parquet"
# Keys that differ between shards of one job; dropped from the merged table's metadata.
SHARD_KEYS = ("shard_index", "num_shards", "row_start", "row_stop", "fingerprint")
# Per-chunk counts of the token contract; summed into the shard's and the merged table's metadata.
COUNT_KEYS = ("words_total", "words_covered")
TOKEN_TASK = "token-classification"


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


class MergeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    out_path: str
    rows: int
    shards: int
    words_total: int | None = None
    words_covered: int | None = None


def shard_range(total: int, index: int, num_shards: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of shard `index`; sizes differ by at most one."""
    return total * index // num_shards, total * (index + 1) // num_shards


def shard_file(pseudo_dir: Path, index: int, num_shards: int) -> Path:
    return Path(pseudo_dir) / "shards" / f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def _transfer_rows(path: Path, token: bool) -> int:
    return data.token_transfer_rows(path) if token else data.transfer_rows(path)


def _fingerprint(meta: dict, cfg: PipelineConfig, transfer_path: Path, start: int, stop: int, total: int) -> str:
    """Everything that changes a stored number or a row: same fingerprint, same bytes."""
    tc = cfg.transfer
    st = transfer_path.stat()
    key = {**meta, "batch_size": tc.batch_size, "sort_window": tc.sort_window, "chunk_rows": tc.chunk_rows,
           "row_group_rows": cfg.data.row_group_rows, "rows": [start, stop], "transfer": [st.st_size, total]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _stored_fingerprint(path: Path) -> str | None:
    try:
        return data.read_metadata(pq.read_schema(path)).get("fingerprint")
    except (OSError, pa.ArrowInvalid):
        return None  # a torn or foreign file: redo it


def _write_stream(tables: Iterable[pa.Table], schema: pa.Schema, out_path: Path, row_group_rows: int) -> int:
    """Write tables as one Parquet file with row groups of exactly row_group_rows (the last may be
    short), atomically. Fixed row groups make the bytes independent of how the input was cut."""
    rows = 0
    with data.atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            pending: list[pa.Table] = []
            held = 0
            for table in tables:
                pending.append(table.cast(schema))
                held += len(table)
                while held >= row_group_rows:
                    buf = pa.concat_tables(pending)
                    writer.write_table(buf.slice(0, row_group_rows), row_group_size=row_group_rows)
                    rest = buf.slice(row_group_rows)
                    pending, held = [rest], len(rest)
                    rows += row_group_rows
            if held or rows == 0:
                writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table(), row_group_size=row_group_rows)
                rows += held
    return rows


def _release_memory() -> None:
    """Hand freed heap pages back to the OS between chunks. glibc raises its mmap threshold after
    large tensors are freed, so later batches of other shapes land on the heap and fragment it;
    without a trim the peak RSS creeps up with the number of batches, i.e. with the transfer set."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _score_chunk(model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None, progress) -> tuple[np.ndarray, np.ndarray | None]:
    """Score one chunk window by window; the windows depend only on the chunk, so a resumed run
    forms the same batches (and gets the same bits) as an uninterrupted one."""
    tc = cfg.transfer
    texts = table.column("text").to_pylist()
    logits, reprs = [], []
    for w in range(0, len(texts), tc.sort_window):
        lg, rp = T.score(model, tokenizer, texts[w : w + tc.sort_window], tc.max_length, tc.batch_size,
                         layer=layer, pooling=tc.pooling, progress=progress)
        logits.append(lg)
        reprs.append(rp)
    return np.concatenate(logits), (np.concatenate(reprs) if layer is not None else None)


def _score_token_chunk(model, tokenizer, table: pa.Table, cfg: PipelineConfig, layer: int | None,
                       progress) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """_score_chunk for transfer-tokens rows: per row (n_i, C) logits and (n_i, H) reprs (float32)
    of the n_i leading words inside max_length."""
    tc = cfg.transfer
    sents = table.column("tokens").to_pylist()
    logits: list[np.ndarray] = []
    reprs: list[np.ndarray] = []
    for w in range(0, len(sents), tc.sort_window):
        lg, rp = T.score_words(model, tokenizer, sents[w : w + tc.sort_window], tc.max_length, tc.batch_size,
                               layer=layer, progress=progress)
        logits += lg
        reprs += rp or []
    return logits, (reprs if layer is not None else None)


def _token_table(table: pa.Table, logits: list[np.ndarray], reprs: list[np.ndarray] | None, meta: dict,
                 transfer_path: Path) -> pa.Table:
    """A pseudo-tokens chunk: each row cut to the words the teacher saw; this chunk's word counts
    go into its metadata (summed into the shard's)."""
    sents = table.column("tokens").to_pylist()
    ids = table.column("id").to_pylist()
    covered = [len(x) for x in logits]
    if covered and min(covered) == 0:  # only when the tokenizer drops every word of the row
        raise DataError(f"{transfer_path}: row id {ids[covered.index(0)]!r}: the teacher's tokenizer gives no piece "
                        "for any of its words (nothing to label)")
    counts = {"words_total": sum(len(s) for s in sents), "words_covered": sum(covered)}
    langs = table.column("lang").to_pylist() if "lang" in table.column_names else None
    return data.token_pseudo_table(ids, [s[:n] for s, n in zip(sents, covered, strict=True)], logits, reprs,
                                   {**meta, **counts}, langs)


def _load_teacher(src, token: bool):
    if not token:
        return T.load_teacher(src)
    model, tokenizer = T.load_teacher(src, task=TOKEN_TASK)
    if not T.head_is_trained(src, task=TOKEN_TASK):
        raise UserError(f"{src}: not a fine-tuned token classifier (no *ForTokenClassification head); run "
                        "finetune-teacher with task: token-classification or point transfer.teacher at one")
    return model, tokenizer


def _counts(path: Path) -> dict[str, int]:
    """words_total / words_covered stored in a pseudo-tokens file's metadata ({} for classification)."""
    meta = data.read_metadata(pq.read_schema(path))
    return {k: int(meta[k]) for k in COUNT_KEYS if k in meta}


def _sum_counts(paths: Iterable[Path]) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in paths:
        for k, v in _counts(p).items():
            total[k] = total.get(k, 0) + v
    return total


def run(cfg: PipelineConfig) -> PseudoLabelResult:
    tc = cfg.transfer
    token = cfg.is_token_task
    t0 = time.perf_counter()
    if tc.num_threads and not torch.cuda.is_available():
        torch.set_num_threads(tc.num_threads)
    transfer_path = cfg.data_dir / "transfer.parquet"
    total = _transfer_rows(transfer_path, token)
    start, stop = shard_range(total, tc.shard_index, tc.num_shards)
    src = tracking.resolve_teacher(cfg)
    model, tokenizer = _load_teacher(src, token)
    device = T.pick_device()
    model.to(device)
    names = T.label_names_of(model)
    layer = tc.layer if tc.keep_repr else None
    hidden = model.config.hidden_size if layer is not None else None
    meta = {"teacher_digest": T.weights_digest(src, model), "layer": layer, "pooling": tc.pooling if tc.keep_repr else None,
            "label_names": names, "max_length": tc.max_length, "hidden_size": model.config.hidden_size}
    if token:  # the representation is per word (first sub-piece): no pooling
        meta = {**{k: v for k, v in meta.items() if k != "pooling"}, "task": TOKEN_TASK}
    fingerprint = _fingerprint(meta, cfg, transfer_path, start, stop, total)
    shard_meta = {**meta, "shard_index": tc.shard_index, "num_shards": tc.num_shards, "row_start": start,
                  "row_stop": stop, "fingerprint": fingerprint}
    if token:
        with_lang = "lang" in pq.read_schema(transfer_path).names
        schema = data.token_pseudo_schema(len(names), hidden, with_lang)  # metadata (with the counts) added below
    else:
        schema = data.with_metadata(data.pseudo_schema(len(names), hidden), "pseudo", shard_meta)
    out_file = shard_file(cfg.pseudo_dir, tc.shard_index, tc.num_shards)
    chunk_dir = cfg.pseudo_dir / "chunks" / f"shard-{tc.shard_index}-of-{tc.num_shards}"
    bounds = [(a, min(a + tc.chunk_rows, stop)) for a in range(start, stop, tc.chunk_rows)]

    with tracking.step_run(cfg, STEP) as tr:
        tr.log_params({"transfer": tc.model_dump(mode="json"), "teacher_ref": str(tc.teacher or cfg.teacher_dir), "rows": stop - start,
                       "teacher_digest": meta["teacher_digest"], "device": str(device)})
        reused = len(bounds)
        max_held = 0
        scored_rows, scoring_s = 0, 0.0
        if _stored_fingerprint(out_file) != fingerprint:  # else this shard is already complete
            reused = 0
            chunk_dir.mkdir(parents=True, exist_ok=True)
            for stale in chunk_dir.glob(".*.tmp"):  # torn writes of a killed run
                stale.unlink(missing_ok=True)
            from tqdm.auto import tqdm

            with tqdm(total=stop - start, unit="ex", desc=f"pseudo-label shard {tc.shard_index}/{tc.num_shards}") as bar:
                for a, b in bounds:
                    path = chunk_dir / f"rows-{a:012d}-{b:012d}.parquet"
                    if _stored_fingerprint(path) == fingerprint:
                        reused += 1
                        bar.update(b - a)
                        continue
                    # One chunk of rows in memory at a time, read row group by row group.
                    read = data.iter_token_transfer if token else data.iter_transfer
                    table = pa.concat_tables(list(read(transfer_path, a, b)))
                    max_held = max(max_held, len(table))
                    ts = time.perf_counter()
                    score = _score_token_chunk if token else _score_chunk
                    logits, reprs = score(model, tokenizer, table, cfg, layer, bar.update)
                    scoring_s += time.perf_counter() - ts
                    scored_rows += len(table)
                    bar.set_postfix(ex_per_s=f"{scored_rows / max(scoring_s, 1e-9):.1f}")
                    if token:
                        chunk = _token_table(table, logits, reprs, shard_meta, transfer_path)
                    else:
                        chunk = data.pseudo_table(table.column("id").to_pylist(), table.column("text").to_pylist(),
                                                  logits, reprs, shard_meta)
                    data.write_table(chunk, path, row_group_rows=cfg.data.row_group_rows)
                    del table, logits, reprs, chunk
                    _release_memory()
            chunk_files = [chunk_dir / f"rows-{a:012d}-{b:012d}.parquet" for a, b in bounds]
            if token:
                counts = {k: 0 for k in COUNT_KEYS} | _sum_counts(chunk_files)
                schema = data.with_metadata(schema, "pseudo-tokens", {**shard_meta, **counts})
            _write_stream((pq.read_table(f) for f in chunk_files), schema, out_file, cfg.data.row_group_rows)
            for f in chunk_files:  # the shard file now holds them; keep the artifact small
                f.unlink()
            for d in (chunk_dir, chunk_dir.parent):
                try:
                    d.rmdir()
                except OSError:  # not empty: another shard's chunks share the dir
                    pass
        merged = None
        if tc.num_shards == 1:
            merged = cfg.pseudo_dir / PSEUDO_FILE
            merge([out_file], transfer_path, merged, cfg.data.row_group_rows, token=token)
        seconds = time.perf_counter() - t0
        ex_s = scored_rows / scoring_s if scoring_s else 0.0
        words = _counts(out_file)  # {} for classification
        if words:
            words["words_cut"] = words["words_total"] - words["words_covered"]
        data.write_json(cfg.pseudo_dir / f"manifest-shard-{tc.shard_index:05d}-of-{tc.num_shards:05d}.json", {
            **shard_meta, "rows": stop - start, "chunks": len(bounds), "chunks_reused": reused,
            "scored_rows": scored_rows, "examples_per_s": ex_s, "seconds": seconds, "shard_file": out_file.name, **words})
        tr.log_metrics({"rows": stop - start, "scored_rows": scored_rows, "examples_per_s": ex_s, "seconds": seconds,
                        "chunks_reused": reused, **words})
        log.info("pseudo-labelled shard %d/%d: %d rows (%d scored, %d/%d chunks reused) in %.1f s, %.1f examples/s -> %s",
                 tc.shard_index, tc.num_shards, stop - start, scored_rows, reused, len(bounds), seconds, ex_s, out_file)
        if words.get("words_cut"):
            log.warning("%d of %d words (%.2f%%) lie beyond transfer.max_length=%d: their rows keep only the words the "
                        "teacher saw", words["words_cut"], words["words_total"],
                        100 * words["words_cut"] / max(words["words_total"], 1), tc.max_length)
        return PseudoLabelResult(
            pseudo_dir=str(cfg.pseudo_dir), shard_file=str(out_file), merged_file=str(merged) if merged else None,
            shard_index=tc.shard_index, num_shards=tc.num_shards, rows=stop - start, chunks=len(bounds),
            chunks_reused=reused, max_rows_held=max_held, seconds=seconds, examples_per_s=ex_s,
            teacher_digest=meta["teacher_digest"], mlflow_run_id=tr.run_id, **words)


# ---------------------------------------------------------------- merge

def _transfer_ids(path: Path, batch_rows: int = 65536) -> Iterator[pa.Array]:
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["id"]):
        yield batch.column(0)


class _IdStream:
    """Hands out the transfer ids n at a time, reading only the id column."""

    def __init__(self, path: Path):
        self._it = _transfer_ids(path)
        self._buf: list[pa.Array] = []
        self._held = 0

    def take(self, n: int) -> pa.Array:
        while self._held < n:
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._buf.append(nxt)
            self._held += len(nxt)
        arr = pa.concat_arrays(self._buf) if self._buf else pa.array([], pa.string())
        out, rest = arr.slice(0, n), arr.slice(n)
        self._buf, self._held = [rest], len(rest)
        return out


def _diagnose(shard_files: Sequence[Path], transfer_path: Path) -> str:
    """Which ids are missing, duplicated or foreign (only on failure, so sets are affordable)."""
    expected = set()
    for ids in _transfer_ids(transfer_path):
        expected.update(ids.to_pylist())
    seen: Counter[str] = Counter()
    where: dict[str, str] = {}
    problems = []
    for f in shard_files:
        ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        seen.update(ids)
        for i in ids:
            where.setdefault(i, f.name)
        extra = [i for i in ids if i not in expected]
        if extra:
            problems.append(f"{f}: {len(extra)} ids not in {transfer_path} (e.g. {extra[:3]})")
    dups = [i for i, c in seen.items() if c > 1]
    if dups:
        problems.append(f"{len(dups)} ids appear more than once (e.g. {dups[:3]}, first in {where[dups[0]]})")
    missing = [i for i in expected if i not in seen]
    if missing:
        problems.append(f"{len(missing)} transfer ids missing from every shard (e.g. {sorted(missing)[:3]})")
    return "; ".join(problems) or "rows are not in transfer-set order"


def _is_token_table(schema: pa.Schema) -> bool:
    return "tokens" in schema.names or (schema.metadata or {}).get(data.META_TABLE) == b"pseudo-tokens"


def merge(shard_files: list[Path], transfer_path: Path, out_path: Path, row_group_rows: int = 2048,
          token: bool | None = None) -> MergeResult:
    """Concatenate shards (ordered by their row range) into out_path, checking that every transfer
    id appears exactly once, in transfer order; a DataError names what is missing/duplicated.
    Either contract: pseudo (classification) or pseudo-tokens, told apart by the shards' columns
    (`token` given: the shards must be of that contract)."""
    shard_files = [Path(f) for f in shard_files]
    if not shard_files:
        raise UserError("merge: no shard files given")
    metas = []
    for f in shard_files:
        pf = data._open(f)
        is_token = _is_token_table(pf.schema_arrow)
        if token is None:
            token = is_token
        if is_token != token:
            want = "pseudo-tokens (token-classification)" if token else "pseudo (sequence-classification)"
            raise DataError(f"{f}: not a {want} table")
        check = data.check_token_pseudo_schema if token else data.check_pseudo_schema
        metas.append((check(pf.schema_arrow, f), pf.schema_arrow, f))
    base, base_schema, base_file = metas[0]
    for meta, schema_f, f in metas[1:]:
        for key in ("teacher_digest", "layer", "pooling", "label_names", "max_length", "num_labels", "repr_dim", "task"):
            if meta.get(key) != base.get(key):
                raise DataError(f"{f}: metadata '{key}' = {meta.get(key)!r} differs from {base_file}'s {base.get(key)!r}")
        if schema_f.names != base_schema.names:
            raise DataError(f"{f}: columns {schema_f.names} differ from {base_file}'s {base_schema.names}")
    metas.sort(key=lambda m: (m[0].get("row_start", 0), str(m[2])))
    ordered = [f for _, _, f in metas]
    out_meta = {k: v for k, v in base.items() if k not in SHARD_KEYS + ("num_labels", "repr_dim")}
    counts = {k: sum(int(m.get(k) or 0) for m, _, _ in metas) for k in COUNT_KEYS if k in base}
    out_meta.update(counts)
    schema = data.with_metadata(pa.schema(list(base_schema)), "pseudo-tokens" if token else "pseudo", out_meta)
    expected_rows = _transfer_rows(Path(transfer_path), token)
    ids = _IdStream(transfer_path)

    def checked() -> Iterator[pa.Table]:
        got = 0
        for f in ordered:
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                part = pf.read_row_group(rg)
                want = ids.take(len(part)).cast(pa.string())
                if not part.column("id").combine_chunks().cast(pa.string()).equals(want):
                    raise DataError(f"{f}: ids do not line up with {transfer_path}: {_diagnose(ordered, transfer_path)}")
                got += len(part)
                yield part
        if got != expected_rows:
            raise DataError(f"{transfer_path} has {expected_rows} rows, the shards {got}: {_diagnose(ordered, transfer_path)}")

    rows = _write_stream(checked(), schema, Path(out_path), row_group_rows)
    log.info("merged %d shards, %d rows -> %s", len(ordered), rows, out_path)
    return MergeResult(out_path=str(out_path), rows=rows, shards=len(ordered), **counts)


def merge_run(cfg: PipelineConfig, shard_dirs: list[Path]) -> MergeResult:
    """The kfp merge task: each entry is one shard task's pseudo_dir (or a shard file)."""
    files: list[Path] = []
    for d in map(Path, shard_dirs):
        found = [d] if d.is_file() else sorted((d / "shards").glob("shard-*.parquet"))
        if not found:
            raise UserError(f"{d}: no shards/shard-*.parquet inside (not a pseudo-label shard output)")
        files += found
    out = cfg.pseudo_dir / PSEUDO_FILE
    result = merge(files, cfg.data_dir / "transfer.parquet", out, cfg.data.row_group_rows, token=cfg.is_token_task)
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
