"""pseudo-label-transfer-set for task: token-classification on a tiny BERT tagger: the pseudo-tokens
contract (per-word logits/repr at the first sub-piece, tokens cut to the words the teacher saw),
shards + merge, resume, streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from components import pseudo_label as P
from components.lib.contracts import data, token_data
from components.lib.core import tokens
from components.lib.core.errors import DataError, UserError
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from tests.helpers import NER_TAGS

torch.set_num_threads(1)
TASK = "token-classification"


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory, tiny_bert_dir):
    """A tiny (untrained) token classifier saved like finetune-teacher's output."""
    out = tmp_path_factory.mktemp("tagger")
    torch.manual_seed(1)
    model, tok = T.load_teacher(tiny_bert_dir, label_names=NER_TAGS, task=TASK)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(tmp_path: Path, task_dir: Path, teacher: Path, out: str = "pseudo", task: str = TASK, **transfer) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "task": task,
        "work_dir": str(tmp_path / "work"),
        "data": {"output_dir": str(task_dir), "row_group_rows": 64},
        "transfer": {"teacher": str(teacher), "batch_size": 8, "sort_window": 32, "chunk_rows": 50,
                     "num_threads": 1, "output_dir": str(tmp_path / out), **transfer},
        "tracking": {"enabled": False},
    })


def _ragged(table, column, dtype=np.float32) -> list[np.ndarray]:
    values, offsets = token_data.ragged_to_numpy(table.column(column), dtype)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def test_output_contract_and_alignment(tmp_path, tiny_ner_dir, tagger_dir):
    cfg = _cfg(tmp_path, tiny_ner_dir, tagger_dir)
    res = P.run(cfg)
    transfer = token_data.read_token_transfer(tiny_ner_dir / "transfer.parquet")
    sents = transfer.column("tokens").to_pylist()
    n_words = sum(len(s) for s in sents)
    assert res.rows == len(transfer) == 120 and res.chunks == 3 and res.chunks_reused == 0
    assert (res.words_total, res.words_covered, res.words_cut) == (n_words, n_words, 0)
    table, meta = token_data.read_token_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    schema = pq.read_schema(cfg.pseudo_dir / "pseudo.parquet")
    assert schema.metadata[b"distilflow.table"] == b"pseudo-tokens" and "lang" not in schema.names
    assert table.column("id").equals(transfer.column("id")) and table.column("tokens").to_pylist() == sents
    logits, reprs = _ragged(table, "teacher_logits"), _ragged(table, "teacher_repr", np.float16)
    tags = _ragged(table, "teacher_tags", np.int64)
    for s, lg, rp, tg in zip(sents, logits, reprs, tags, strict=True):
        assert lg.shape == (len(s), 7) and rp.shape == (len(s), 32) and rp.dtype == np.float16
        assert (tg == lg.argmax(1)).all()
    assert meta["label_names"] == NER_TAGS and meta["layer"] == -1 and meta["max_length"] == 128
    assert meta["num_labels"] == 7 and meta["repr_dim"] == 32 and meta["task"] == TASK
    assert meta["teacher_digest"] == data.sha256_file(tagger_dir / "model.safetensors")
    assert (meta["words_total"], meta["words_covered"]) == (n_words, n_words)
    assert "fingerprint" not in meta and "shard_index" not in meta and "pooling" not in meta
    assert not (cfg.pseudo_dir / "chunks").exists()
    manifest = json.loads((cfg.pseudo_dir / "manifest-shard-00000-of-00001.json").read_text())
    assert manifest["words_cut"] == 0 and manifest["rows"] == 120
    # an unsorted reference: every sentence alone, the hidden state read at each word's first piece
    model, tok = T.load_teacher(tagger_dir, task=TASK)
    enc = tokens.encode_words(tok, sents[:20], 128)
    for i in range(20):
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(enc.input_ids[i])[None], output_hidden_states=True)
        fp = enc.first_piece[i]
        np.testing.assert_allclose(logits[i], out.logits[0, fp].numpy(), atol=1e-5)
        np.testing.assert_allclose(reprs[i].astype(np.float32), out.hidden_states[-1][0, fp].numpy(), atol=2e-3)


def test_max_length_cuts_words_and_other_layers(tmp_path, tiny_ner_dir, tagger_dir):
    cfg = _cfg(tmp_path, tiny_ner_dir, tagger_dir, max_length=8, layer=1)
    res = P.run(cfg)
    sents = token_data.read_token_transfer(tiny_ner_dir / "transfer.parquet").column("tokens").to_pylist()
    _, tok = T.load_teacher(tagger_dir, task=TASK)
    enc = tokens.encode_words(tok, sents, 8)
    covered = [enc.covered(i) for i in range(len(sents))]
    assert res.words_cut == sum(len(s) for s in sents) - sum(covered) > 100
    assert res.words_covered == sum(covered) and min(covered) >= 1
    table, meta = token_data.read_token_pseudo(cfg.pseudo_dir / "pseudo.parquet")
    assert table.column("tokens").to_pylist() == [s[:n] for s, n in zip(sents, covered, strict=True)]
    assert [len(x) for x in _ragged(table, "teacher_repr")] == covered
    assert meta["max_length"] == 8 and meta["layer"] == 1 and meta["words_covered"] == sum(covered)
    norepr = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="norepr", keep_repr=False)
    P.run(norepr)
    table, meta = token_data.read_token_pseudo(norepr.pseudo_dir / "pseudo.parquet")
    assert "teacher_repr" not in table.column_names and meta["repr_dim"] is None and meta["layer"] is None


def test_lang_column_is_kept(tmp_path, tiny_ner_dir, tagger_dir):
    task = tmp_path / "task"
    shutil.copytree(tiny_ner_dir, task)
    transfer = token_data.read_token_transfer(task / "transfer.parquet")
    langs = [["en", "de", "fr"][i % 3] for i in range(len(transfer))]
    data.write_table(token_data.token_transfer_table(transfer.column("id").to_pylist(), transfer.column("tokens").to_pylist(),
                                               langs), task / "transfer.parquet", row_group_rows=64)
    cfg = _cfg(tmp_path, task, tagger_dir, num_shards=2, shard_index=1)
    res = P.run(cfg)
    table, _ = token_data.read_token_pseudo(res.shard_file)
    assert table.column("lang").to_pylist() == langs[60:]


def test_shards_merged_equal_the_single_shard(tmp_path, tiny_ner_dir, tagger_dir):
    single = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="single")
    P.run(single)
    shard_dirs, files = [], []
    for i in range(3):
        cfg = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out=f"shard{i}", num_shards=3, shard_index=i)
        res = P.run(cfg)
        assert res.merged_file is None and res.rows == 40
        shard_dirs.append(cfg.pseudo_dir)
        files.append(Path(res.shard_file))
    merged = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="merged")
    result = P.merge_run(merged, list(reversed(shard_dirs)))  # order of the list does not matter
    assert result.rows == 120 and result.shards == 3 and result.words_total == result.words_covered
    a, ma = token_data.read_token_pseudo(single.pseudo_dir / "pseudo.parquet")
    b, mb = token_data.read_token_pseudo(merged.pseudo_dir / "pseudo.parquet")
    assert ma == mb and mb["words_total"] == result.words_total  # counts summed over the shards
    assert json.loads((merged.pseudo_dir / "manifest.json").read_text())["words_total"] == result.words_total
    for col in ("id", "tokens", "teacher_tags"):
        assert a.column(col).equals(b.column(col)), col
    # shards cut the sort windows differently, so padding (and the last bits) may differ
    np.testing.assert_allclose(token_data.ragged_to_numpy(a.column("teacher_logits"))[0],
                               token_data.ragged_to_numpy(b.column("teacher_logits"))[0], atol=1e-5)
    np.testing.assert_allclose(token_data.ragged_to_numpy(a.column("teacher_repr"))[0],
                               token_data.ragged_to_numpy(b.column("teacher_repr"))[0], atol=2e-3)
    transfer = tiny_ner_dir / "transfer.parquet"
    with pytest.raises(DataError, match=r"40 transfer ids missing from every shard"):
        P.merge([files[0], files[2]], transfer, tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"40 ids appear more than once"):
        P.merge([files[0], files[1], files[1], files[2]], transfer, tmp_path / "m.parquet")
    classification = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="cls", task="sequence-classification")
    with pytest.raises(DataError, match=r"shard-00000-of-00003\.parquet: not a pseudo \(sequence-classification\) table"):
        P.merge_run(classification, shard_dirs)
    assert not (tmp_path / "m.parquet").exists()


def test_resume_recomputes_only_the_missing_chunk(tmp_path, tiny_ner_dir, tagger_dir, monkeypatch):
    clean = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="clean", chunk_rows=20)
    P.run(clean)
    crashed = _cfg(tmp_path, tiny_ner_dir, tagger_dir, out="crashed", chunk_rows=20)

    def killed(*args, **kwargs):
        raise RuntimeError("killed while writing the shard")

    with monkeypatch.context() as m:  # every chunk scored and written, then the process dies
        m.setattr(P, "write_stream", killed)
        with pytest.raises(RuntimeError, match="killed"):
            P.run(crashed)
    chunk_dir = crashed.pseudo_dir / "chunks" / "shard-0-of-1"
    chunks = sorted(chunk_dir.glob("rows-*.parquet"))
    assert len(chunks) == 6 and not (crashed.pseudo_dir / "pseudo.parquet").exists()
    chunks[2].unlink()
    res = P.run(crashed)
    manifest = json.loads((crashed.pseudo_dir / "manifest-shard-00000-of-00001.json").read_text())
    assert res.chunks == 6 and res.chunks_reused == 5 and manifest["scored_rows"] == 20
    for rel in ("pseudo.parquet", "shards/shard-00000-of-00001.parquet"):
        assert (crashed.pseudo_dir / rel).read_bytes() == (clean.pseudo_dir / rel).read_bytes(), rel
    assert P.run(crashed).chunks_reused == 6  # a complete shard is not scored twice
    assert P.run(crashed.with_overrides({"transfer.max_length": 16})).chunks_reused == 0


def test_streaming_holds_one_chunk_at_a_time(tmp_path, tiny_ner_dir, tagger_dir, monkeypatch):
    sizes = []
    real = P.tokens.read_rows  # token_data.iter_token_transfer, as the step reads the transfer rows

    def counting(*args, **kwargs):
        for part in real(*args, **kwargs):
            sizes.append(len(part))
            yield part

    monkeypatch.setattr(P.tokens, "read_rows", counting)
    res = P.run(_cfg(tmp_path, tiny_ner_dir, tagger_dir, chunk_rows=30))
    assert sum(sizes) == 120 and max(sizes) <= 30 and res.max_rows_held == 30 and res.chunks == 4


def test_teacher_must_be_a_token_classifier(tmp_path, tiny_ner_dir, tiny_bert_dir, tiny_task_dir, tagger_dir):
    with pytest.raises(UserError, match=r"not a fine-tuned token classifier \(no \*ForTokenClassification head\)"):
        P.run(_cfg(tmp_path, tiny_ner_dir, tiny_bert_dir))
    with pytest.raises(DataError, match=r"transfer\.parquet: column 'tokens' missing"):
        P.run(_cfg(tmp_path, tiny_task_dir, tagger_dir))


def test_a_row_without_any_teacher_piece_is_named(tmp_path, tagger_dir):
    task = tmp_path / "task"
    task.mkdir()
    # U+200B (zero width space) is not whitespace, so the contract accepts it, but WordPiece drops it
    table = token_data.token_transfer_table(["a", "b", "c"], [["alice", "\u200b"], ["\u200b"], ["paris"]])
    data.write_table(table, task / "transfer.parquet")
    with pytest.raises(DataError, match=r"transfer\.parquet: row id 'b': the teacher's tokenizer gives no piece"):
        P.run(_cfg(tmp_path, task, tagger_dir))
