"""Pseudo-labeled tables are checked where they are read: a real table written by the
pseudo-label step on a tiny teacher, corrupted the way a bad writer or a broken teacher would
(NaN logits, a label past the last class, a cut representation), makes distill-student (and the
merge) stop with exit code 2 and one line naming the file, the column and the first bad row,
before anything is written. The pseudo-label step checks its teacher's output the same way before
writing a chunk. Also: the chunk fingerprint covers the device and compute dtype."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components import distill_student
from components import pseudo_label as P
from components.lib.contracts import data, shards
from components.lib.contracts.pseudo_values import check_pseudo_values
from components.lib.core.errors import DataError
from components.lib.models import teacher as T
from components.lib.settings.config import PipelineConfig
from tests.helpers import LABELS, NER_TAGS

torch.set_num_threads(1)
STUDENT = {"embed_dim": 16, "hidden": 16, "max_length": 24, "batch_size": 16, "repr_epochs": 1, "soft_epochs": 1,
           "label_epochs": 1, "num_threads": 1, "max_vocab": 2000}


def _raw(tmp: Path, task_dir: Path, teacher: Path, pseudo: Path, task: str) -> dict:
    return {
        "task": task, "work_dir": str(tmp / "work"),
        "data": {"output_dir": str(task_dir), "row_group_rows": 64},
        "transfer": {"teacher": str(teacher), "batch_size": 8, "sort_window": 32, "chunk_rows": 50,
                     "num_threads": 1, "output_dir": str(pseudo)},
        "student": {**STUDENT, "mode": "soft+repr", "output_dir": str(tmp / "student")},
        "tracking": {"enabled": False},
    }


def _sets(raw: dict) -> list[str]:
    """The config as --set arguments, as a pipeline author would pass them on the command line."""
    out: list[str] = []
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            out += ["--set", f"{key}.{sub}={v}" if sub else f"{key}={v}"]
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_bert_dir, tiny_task_dir) -> tuple[Path, Path]:
    """(teacher dir, pseudo dir) of a real pseudo-label run on the topic task (240 rows, repr kept)."""
    root = tmp_path_factory.mktemp("labelled")
    torch.manual_seed(1)
    model, tok = T.load_teacher(tiny_bert_dir, label_names=LABELS)
    model.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    raw = _raw(root, tiny_task_dir, root / "teacher", root / "pseudo", "sequence-classification")
    P.run(PipelineConfig.model_validate(raw))
    return root / "teacher", root / "pseudo"


@pytest.fixture(scope="module")
def ner_labelled(tmp_path_factory, tiny_ner_dir, tiny_ner_teacher_dir) -> Path:
    """The pseudo dir of a real pseudo-label run on the NER task (per-word logits and states)."""
    root = tmp_path_factory.mktemp("ner-labelled")
    P.run(PipelineConfig.model_validate(_raw(root, tiny_ner_dir, tiny_ner_teacher_dir, root / "pseudo", "token-classification")))
    return root / "pseudo"


def _rewrite(path: Path, column: str, new: pa.Array) -> None:
    """Replace one column of a Parquet file in place, keeping the distilflow metadata (a foreign writer)."""
    table = pq.read_table(path)
    i = table.column_names.index(column)
    table = table.set_column(i, pa.field(column, new.type), new).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, path)


def _fixed(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """(N, W) -> fixed_size_list<arrow_type>[W]."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), arrow_type), values.shape[1])


def nan_logit(path: Path) -> None:
    logits = data.fixed_list_to_numpy(pq.read_table(path).column("teacher_logits")).copy()
    logits[7, 1] = np.nan
    _rewrite(path, "teacher_logits", _fixed(logits, pa.float32()))


def label_past_the_end(path: Path) -> None:
    labels = pq.read_table(path).column("teacher_label").to_numpy().copy()
    labels[11] = len(LABELS)
    _rewrite(path, "teacher_label", pa.array(labels, pa.int64()))


def cut_repr(path: Path) -> None:
    reprs = data.fixed_list_to_numpy(pq.read_table(path).column("teacher_repr"), np.float16)  # (N, 32)
    _rewrite(path, "teacher_repr", _fixed(reprs[:, :-1], pa.float16()))


def _distill_refuses(corrupt, message: str, tmp_path: Path, good: Path, data_dir: Path, teacher: Path, task: str,
                     capsys) -> None:
    """distill-student on a corrupted copy of a good pseudo table: exit 2, one line naming the file
    and what is wrong, and no student dir (not even the token cache)."""
    pseudo = tmp_path / "pseudo"
    shutil.copytree(good, pseudo)
    path = pseudo / "pseudo.parquet"
    corrupt(path)
    raw = _raw(tmp_path, data_dir, teacher, pseudo, task)
    assert distill_student.main(_sets(raw)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and re.search(message, err[0]), err
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(("corrupt", "message"), [
    (nan_logit, r"column 'teacher_logits' row 7: value nan is not finite \(1 bad values\)"),
    (label_past_the_end, r"column 'teacher_label' row 11: value 3 is outside 0\.\.2 \(1 bad values\)"),
    (cut_repr, r"column 'teacher_repr' has 31 values per entry, but the teacher's hidden size \(metadata 'hidden_size'\) is 32"),
], ids=["nan-logit", "label-past-the-end", "cut-repr"])
def test_distill_student_stops_on_a_corrupt_pseudo_table(corrupt, message, tmp_path, tiny_task_dir, labelled, capsys):
    teacher, good = labelled
    _distill_refuses(corrupt, message, tmp_path, good, tiny_task_dir, teacher, "sequence-classification", capsys)


def test_the_uncorrupted_table_reads(labelled):
    table, meta = data.read_pseudo(labelled[1] / "pseudo.parquet")
    assert table.num_rows == 240 and meta["num_labels"] == 3 and meta["repr_dim"] == meta["hidden_size"] == 32


def test_merge_checks_the_values_of_each_shard(tmp_path, tiny_task_dir, labelled, capsys):
    _, good = labelled
    shard = tmp_path / "shard"
    shutil.copytree(good, shard)
    path = shards.shard_file(shard, 0, 1)
    label_past_the_end(path)
    raw = _raw(tmp_path, tiny_task_dir, labelled[0], tmp_path / "merged", "sequence-classification")
    assert P.main(["merge", *_sets(raw), "--shard-dir", str(shard)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: column 'teacher_label' row 11: value 3 is outside 0..2 (1 bad values)"]
    assert not (tmp_path / "merged" / "pseudo.parquet").exists()


def _ragged_fixed(table: pa.Table, column: str, np_type, arrow_type: pa.DataType, edit) -> pa.Array:
    """list<fixed_size_list<T>[W]> column with edit(values (words, W), offsets) applied."""
    arr = table.column(column).combine_chunks()
    values = arr.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, arr.type.value_type.list_size).astype(np_type)
    edit(values, arr.offsets.to_numpy())
    return pa.ListArray.from_arrays(arr.offsets, _fixed(values, arrow_type))


def ner_inf_repr(path: Path) -> None:
    def edit(values, offsets):
        values[offsets[5] + 2, 3] = np.inf  # third word of row 5

    _rewrite(path, "teacher_repr", _ragged_fixed(pq.read_table(path), "teacher_repr", np.float16, pa.float16(), edit))


def ner_tag_past_the_end(path: Path) -> None:
    tags = pq.read_table(path).column("teacher_tags").combine_chunks()
    flat = tags.values.to_numpy().copy()
    flat[tags.offsets.to_numpy()[9]] = len(NER_TAGS)  # first word of row 9
    _rewrite(path, "teacher_tags", pa.ListArray.from_arrays(tags.offsets, pa.array(flat, pa.int64())))


def ner_wide_logits(path: Path) -> None:
    table = pq.read_table(path)
    arr = table.column("teacher_logits").combine_chunks()
    values = arr.values.flatten().to_numpy().reshape(-1, len(NER_TAGS))
    wide = np.concatenate([values, np.zeros((len(values), 1), np.float32)], axis=1)
    _rewrite(path, "teacher_logits", pa.ListArray.from_arrays(arr.offsets, _fixed(wide, pa.float32())))


@pytest.mark.parametrize(("corrupt", "message"), [
    (ner_inf_repr, r"column 'teacher_repr' row 5: value inf is not finite \(1 bad values\)"),
    (ner_tag_past_the_end, r"column 'teacher_tags' row 9: value 7 is outside 0\.\.6 \(1 bad values\)"),
    (ner_wide_logits, r"column 'teacher_logits' has 8 values per entry, but the metadata names 7 labels"),
], ids=["inf-repr", "tag-past-the-end", "wide-logits"])
def test_token_distill_stops_on_a_corrupt_pseudo_table(corrupt, message, tmp_path, tiny_ner_dir, tiny_ner_teacher_dir,
                                                       ner_labelled, capsys):
    _distill_refuses(corrupt, message, tmp_path, ner_labelled, tiny_ner_dir, tiny_ner_teacher_dir, "token-classification",
                     capsys)


def test_null_entries_name_their_row(tmp_path):
    logits = np.zeros((4, 3), np.float32)
    table = data.pseudo_table(["a", "b", "c", "d"], ["w", "x", "y", "z"], logits, None, {"label_names": LABELS})
    col = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float32)), 3, mask=pa.array([False, False, True, False]))
    table = table.set_column(3, table.schema.field(3), col)
    with pytest.raises(DataError, match=r"p.parquet: column 'teacher_logits' row 2: null \(1 nulls\)"):
        check_pseudo_values(table, tmp_path / "p.parquet", {"num_labels": 3})


# ---------------------------------------------------------------- chunk fingerprints

def test_fingerprint_covers_device_and_compute_dtype(tmp_path, tiny_task_dir, tiny_bert_dir):
    cfg = PipelineConfig.model_validate({"work_dir": str(tmp_path), "data": {"output_dir": str(tiny_task_dir)}})
    meta = {"teacher_digest": "abc", "layer": -1, "label_names": LABELS}
    key = lambda device, dtype: shards.fingerprint(meta, cfg, tiny_task_dir / "transfer.parquet", 0, 64, 240,  # noqa: E731
                                                   device=device, dtype=dtype)
    assert key("cpu", "float32") == key("cpu", "float32")
    assert len({key("cpu", "float32"), key("cuda", "bfloat16"), key("cuda", "float32"), key("cpu", "bfloat16")}) == 4
    model, _ = T.load_teacher(tiny_bert_dir, label_names=LABELS)
    assert T.compute_dtype(model, torch.device("cpu")) == "float32"
    assert T.compute_dtype(model.to(torch.bfloat16), torch.device("cpu")) == "bfloat16"


# ---------------------------------------------------------------- the teacher's own output

def test_non_finite_teacher_output_stops_before_its_chunk_is_written(tmp_path, tiny_task_dir, tiny_bert_dir, capsys):
    """A teacher whose embedding of one word piece is NaN (what a broken checkpoint or a
    half-precision overflow gives): rows without that piece score fine, the first row with it stops
    the step with one line naming the transfer file, column and row; the chunks before it stay
    (resumable), nothing of its chunk or any shard/merged file is written."""
    model, tok = T.load_teacher(tiny_bert_dir, label_names=LABELS)
    raw = _raw(tmp_path, tiny_task_dir, tmp_path / "teacher", tmp_path / "pseudo", "sequence-classification")
    cfg = PipelineConfig.model_validate(raw)
    texts = pq.read_table(tiny_task_dir / "transfer.parquet", columns=["text"]).column("text").to_pylist()
    ids = tok(texts, truncation=True, max_length=cfg.transfer.max_length)["input_ids"]
    first: dict[int, int] = {}
    for row, seq in enumerate(ids):
        for i in seq:
            first.setdefault(i, row)
    piece, row = min(((i, r) for i, r in first.items() if r >= cfg.transfer.chunk_rows), key=lambda x: x[1])
    with torch.no_grad():
        model.get_input_embeddings().weight[piece] = float("nan")
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    capsys.readouterr()

    assert P.main(_sets(raw)) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars (loading, scoring), then the error
    assert [line for line in err if "error" in line.lower() or "Traceback" in line] == err[-1:], err
    assert re.fullmatch(rf"error: {re.escape(str(tiny_task_dir / 'transfer.parquet'))}: column 'teacher_logits' row {row}: "
                        r"value nan is not finite \(\d+ bad values\) in the teacher's output \(.+, float32 on cpu\); "
                        rf"rows {row // 50 * 50}\.\.{row // 50 * 50 + 49} not written, earlier chunks kept", err[-1]), err[-1]
    chunks = sorted(p.name for p in (tmp_path / "pseudo").rglob("*.parquet"))
    assert chunks == [f"rows-{a:012d}-{a + 50:012d}.parquet" for a in range(0, row // 50 * 50, 50)]
    assert not list((tmp_path / "pseudo").rglob(".*.tmp"))
