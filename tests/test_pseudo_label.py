"""pseudo-label-transfer-set on a tiny BERT classifier: the output contract, order under length
bucketing, shards + merge, resume after kill -9, bounded streaming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from components import pseudo_label as P
from components.lib.contracts import data
from components.lib.core.errors import DataError, UserError
from components.lib.models import teacher as T
from components.lib.settings.config import PROJECT_ROOT, PipelineConfig
from tests.helpers import write_tiny_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_bert_dir):
    """A tiny (untrained) classifier saved like finetune-teacher's output."""
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    model, tok = T.load_teacher(tiny_bert_dir, label_names=["sport", "tech", "money"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(tmp_path: Path, task_dir: Path, teacher: Path, out: str = "pseudo", **transfer) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "work_dir": str(tmp_path / "work"),
        "data": {"output_dir": str(task_dir), "row_group_rows": 64},
        "transfer": {"teacher": str(teacher), "batch_size": 8, "sort_window": 32, "chunk_rows": 50,
                     "num_threads": 1, "output_dir": str(tmp_path / out), **transfer},
        "tracking": {"enabled": False},
    })


def _arrays(path: Path):
    table, meta = data.read_pseudo(path)
    logits = data.fixed_list_to_numpy(table.column("teacher_logits"))
    reprs = data.fixed_list_to_numpy(table.column("teacher_repr"), np.float16) if "teacher_repr" in table.column_names else None
    return table, meta, logits, reprs


def test_output_contract_and_order(tmp_path, tiny_task_dir, teacher_dir):
    cfg = _cfg(tmp_path, tiny_task_dir, teacher_dir)
    res = P.run(cfg)
    transfer = data.read_transfer(tiny_task_dir / "transfer.parquet")
    assert res.rows == len(transfer) == 240 and res.chunks == 5 and res.chunks_reused == 0
    assert Path(res.shard_file).name == "shard-00000-of-00001.parquet"
    table, meta, logits, reprs = _arrays(cfg.pseudo_dir / "pseudo.parquet")
    schema = pq.read_schema(cfg.pseudo_dir / "pseudo.parquet")
    assert str(schema.field("teacher_repr").type) == "fixed_size_list<element: halffloat>[32]"
    assert str(schema.field("teacher_logits").type) == "fixed_size_list<element: float>[3]"
    assert table.column("id").equals(transfer.column("id")) and table.column("text").equals(transfer.column("text"))
    assert logits.shape == (240, 3) and reprs.shape == (240, 32) and reprs.dtype == np.float16
    assert (table.column("teacher_label").to_numpy() == logits.argmax(1)).all()
    assert meta["teacher_digest"] == data.sha256_file(teacher_dir / "model.safetensors")
    assert meta["label_names"] == ["sport", "tech", "money"] and meta["layer"] == -1
    assert meta["pooling"] == "cls" and meta["max_length"] == 128
    assert "fingerprint" not in meta and "shard_index" not in meta
    assert not (cfg.pseudo_dir / "chunks").exists()  # work units are cleaned up
    # an unsorted reference: every text alone, in file order
    model, tok = T.load_teacher(teacher_dir)
    texts = transfer.column("text").to_pylist()
    ref_logits, ref_reprs = T.score(model, tok, texts[:40], 128, batch_size=1, layer=-1)
    np.testing.assert_allclose(logits[:40], ref_logits, atol=1e-5)
    np.testing.assert_allclose(reprs[:40].astype(np.float32), ref_reprs, atol=2e-3)  # float16 storage


def test_mean_pooling_and_no_repr(tmp_path, tiny_task_dir, teacher_dir):
    cfg = _cfg(tmp_path, tiny_task_dir, teacher_dir, pooling="mean", layer=1)
    P.run(cfg)
    _, meta, _, reprs = _arrays(cfg.pseudo_dir / "pseudo.parquet")
    assert meta["pooling"] == "mean" and meta["layer"] == 1
    texts = data.read_transfer(tiny_task_dir / "transfer.parquet").column("text").to_pylist()
    model, tok = T.load_teacher(teacher_dir)
    _, ref = T.score(model, tok, texts[:10], 128, batch_size=1, layer=1, pooling="mean")
    np.testing.assert_allclose(reprs[:10].astype(np.float32), ref, atol=2e-3)
    cfg = _cfg(tmp_path, tiny_task_dir, teacher_dir, out="norepr", keep_repr=False)
    P.run(cfg)
    table, meta = data.read_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    assert "teacher_repr" not in table.column_names and meta["repr_dim"] is None and meta["layer"] is None


def test_shards_cover_every_row_once_and_merge_equals_single(tmp_path, tiny_task_dir, teacher_dir):
    single = _cfg(tmp_path, tiny_task_dir, teacher_dir, out="single")
    P.run(single)
    shard_dirs, seen = [], []
    for i in range(3):
        cfg = _cfg(tmp_path, tiny_task_dir, teacher_dir, out=f"shard{i}", num_shards=3, shard_index=i)
        res = P.run(cfg)
        assert res.merged_file is None and res.rows == 80
        seen += data.read_pseudo(res.shard_file, columns=["id"])[0].column("id").to_pylist()
        shard_dirs.append(cfg.pseudo_dir)
    assert len(seen) == len(set(seen)) == 240
    merged = _cfg(tmp_path, tiny_task_dir, teacher_dir, out="merged")
    result = P.merge_run(merged, list(reversed(shard_dirs)))  # order of the list does not matter
    assert result.rows == 240 and result.shards == 3
    a, ma, la, ra = _arrays(single.pseudo_dir / "pseudo.parquet")
    b, mb, lb, rb = _arrays(merged.pseudo_dir / "pseudo.parquet")
    assert ma == mb
    for col in ("id", "text", "teacher_label"):
        assert a.column(col).equals(b.column(col))
    # shards cut the sort windows differently, so padding (and the last bits) may differ
    np.testing.assert_allclose(la, lb, atol=1e-5)
    np.testing.assert_allclose(ra.astype(np.float32), rb.astype(np.float32), atol=2e-3)


def test_merge_fails_on_missing_and_duplicated_ids(tmp_path, tiny_task_dir, teacher_dir):
    files = []
    for i in range(3):
        files.append(Path(P.run(_cfg(tmp_path, tiny_task_dir, teacher_dir, out=f"s{i}", num_shards=3, shard_index=i)).shard_file))
    transfer = tiny_task_dir / "transfer.parquet"
    with pytest.raises(DataError, match=r"80 transfer ids missing from every shard \(e\.g\. \['transfer-"):
        P.merge([files[0], files[2]], transfer, tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"80 ids appear more than once .*shard-00001-of-00003"):
        P.merge([files[0], files[1], files[1], files[2]], transfer, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()  # nothing half-written
    code = P.main(["merge", "--set", f"data.output_dir={tiny_task_dir}", "--set", f"transfer.output_dir={tmp_path / 'cli'}",
                   "--set", "tracking.enabled=false", *sum((["--shard-dir", str(f.parent.parent)] for f in files), [])])
    assert code == 0 and data.read_pseudo(tmp_path / "cli" / "pseudo.parquet")[0].num_rows == 240


def test_streaming_holds_one_chunk_at_a_time(tmp_path, tiny_task_dir, teacher_dir, monkeypatch):
    sizes = []
    real = P.sequence.read_rows  # data.iter_transfer, as the step reads the transfer rows

    def counting(*args, **kwargs):
        for part in real(*args, **kwargs):
            sizes.append(len(part))
            yield part

    monkeypatch.setattr(P.sequence, "read_rows", counting)
    res = P.run(_cfg(tmp_path, tiny_task_dir, teacher_dir, chunk_rows=30))
    assert sum(sizes) == 240 and max(sizes) <= 30  # never more than a row group, clipped to the chunk
    assert res.max_rows_held == 30 and res.chunks == 8


def test_rerun_reuses_only_matching_work(tmp_path, tiny_task_dir, teacher_dir):
    cfg = _cfg(tmp_path, tiny_task_dir, teacher_dir)
    first = P.run(cfg)
    assert P.run(cfg).chunks_reused == first.chunks  # same teacher and settings: nothing rescored
    changed = P.run(cfg.with_overrides({"transfer.max_length": 16}))
    assert changed.chunks_reused == 0
    assert data.read_pseudo(cfg.pseudo_dir / "pseudo.parquet")[1]["max_length"] == 16


def test_missing_teacher_is_a_user_error(tmp_path, tiny_task_dir):
    cfg = _cfg(tmp_path, tiny_task_dir, tmp_path / "no-teacher")
    with pytest.raises(UserError, match="model directory not found"):
        P.run(cfg)


def test_resume_after_kill_is_byte_identical(tmp_path, teacher_dir):
    task = write_tiny_task(tmp_path / "task", train=2, dev=2, test=2, transfer=700, seed=3)  # 2100 transfer rows
    clean = _cfg(tmp_path, task, teacher_dir, out="clean", chunk_rows=100)
    P.run(clean)
    crashed = _cfg(tmp_path, task, teacher_dir, out="crashed", chunk_rows=100)
    chunk_dir = crashed.pseudo_dir / "chunks" / "shard-0-of-1"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    sets = ["data.output_dir=" + str(task), "data.row_group_rows=64", f"transfer.teacher={teacher_dir}", "transfer.batch_size=8",
            "transfer.sort_window=32", "transfer.chunk_rows=100", "transfer.num_threads=1",
            f"transfer.output_dir={crashed.pseudo_dir}", "tracking.enabled=false", f"work_dir={tmp_path / 'work'}"]
    proc = subprocess.Popen([sys.executable, "-m", "components.pseudo_label", *sum((["--set", s] for s in sets), [])],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (chunk_dir.exists() and list(chunk_dir.glob("rows-*.parquet"))):
        assert proc.poll() is None, "the labelling process ended before writing a chunk"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(chunk_dir.glob("rows-*.parquet")))
    assert 1 <= done < 21 and not (crashed.pseudo_dir / "pseudo.parquet").exists()
    res = P.run(crashed)
    assert res.chunks == 21 and res.chunks_reused >= done
    for rel in ("pseudo.parquet", "shards/shard-00000-of-00001.parquet"):
        assert (crashed.pseudo_dir / rel).read_bytes() == (clean.pseudo_dir / rel).read_bytes(), rel
    again = P.run(crashed)  # a complete shard is not scored twice
    assert again.chunks_reused == 21 and again.examples_per_s == 0.0


def test_tokenizer_threads_change_no_output(tmp_path, tiny_task_dir, teacher_dir, monkeypatch):
    """The fast tokenizer may use several threads while the teacher scores (the bound on a GPU node):
    the env it needs is set around each chunk's scoring only, and the table is byte-identical."""
    seen: list[tuple[str | None, str | None]] = []
    tokenize = T.token_lengths

    def recording(*args, **kwargs):  # the real tokenisation, plus what the env said during it
        seen.append((os.environ.get("TOKENIZERS_PARALLELISM"), os.environ.get("RAYON_NUM_THREADS")))
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(T, "token_lengths", recording)
    before = (os.environ.get("TOKENIZERS_PARALLELISM"), os.environ.get("RAYON_NUM_THREADS"))
    P.run(_cfg(tmp_path, tiny_task_dir, teacher_dir, out="one", tokenizer_threads=1))
    first = len(seen)  # one call per sort window
    P.run(_cfg(tmp_path, tiny_task_dir, teacher_dir, out="two", tokenizer_threads=2))
    assert first > 0 and seen == [("false", "1")] * first + [("true", "2")] * first
    assert (os.environ.get("TOKENIZERS_PARALLELISM"), os.environ.get("RAYON_NUM_THREADS")) == before
    assert (tmp_path / "one" / "pseudo.parquet").read_bytes() == (tmp_path / "two" / "pseudo.parquet").read_bytes()
    manifest = json.loads(next((tmp_path / "two").glob("manifest-shard-*.json")).read_text())
    assert manifest["tokenizer_threads"] == 2
