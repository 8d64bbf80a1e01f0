"""Parquet contracts: round trips, every validation error, atomic writes, streaming reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.lib.contracts import data
from components.lib.core.errors import DataError

NAMES = ["sport", "tech", "money"]


def labeled(n: int = 6) -> pa.Table:
    return data.labeled_table([f"r{i}" for i in range(n)], [f"text number {i}" for i in range(n)], [i % 3 for i in range(n)], NAMES)


def raw_write(path: Path, columns: dict, metadata: dict | None = None) -> Path:
    """A table written around the contract helpers, to build broken files."""
    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)
    return path


NAME_META = {b"distilflow.label_names": b'["sport", "tech", "money"]'}


# ---------------------------------------------------------------- round trips

def test_labeled_round_trip(tmp_path):
    table = labeled()
    data.write_table(table, tmp_path / "train.parquet")
    got = data.read_labeled(tmp_path / "train.parquet")
    assert got.label_names == NAMES
    assert got.table.to_pydict() == table.to_pydict()
    assert got.table.schema.field("label").type == pa.int64()


def test_transfer_round_trip_and_metadata(tmp_path):
    table = data.transfer_table(["a", "b"], ["one text", "two texts"], {"source": "x.csv"})
    data.write_table(table, tmp_path / "t.parquet")
    assert data.read_transfer(tmp_path / "t.parquet").to_pydict() == {"id": ["a", "b"], "text": ["one text", "two texts"]}
    assert data.transfer_rows(tmp_path / "t.parquet") == 2
    meta = data.read_metadata(pq.read_schema(tmp_path / "t.parquet"))
    assert meta == {"rows": 2, "source": "x.csv"}


def test_same_table_same_bytes(tmp_path):
    data.write_table(labeled(50), tmp_path / "a.parquet", row_group_rows=16)
    data.write_table(labeled(50), tmp_path / "b.parquet", row_group_rows=16)
    assert data.sha256_file(tmp_path / "a.parquet") == data.sha256_file(tmp_path / "b.parquet")
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 4


def test_large_string_text_is_accepted(tmp_path):
    raw_write(tmp_path / "x.parquet", {"id": pa.array(["a"], pa.large_string()), "text": pa.array(["hi"], pa.large_string()),
                                       "label": pa.array([1], pa.int64())}, NAME_META)
    assert data.read_labeled(tmp_path / "x.parquet").table.column("text").to_pylist() == ["hi"]


def test_iter_transfer_streams_row_ranges(tmp_path):
    n = 300
    ids = [f"t{i}" for i in range(n)]
    data.write_table(data.transfer_table(ids, [f"text {i}" for i in range(n)]), tmp_path / "t.parquet", row_group_rows=64)
    for start, stop in [(0, None), (50, 200), (64, 128), (299, 300), (10, 10), (250, 1000)]:
        parts = list(data.iter_transfer(tmp_path / "t.parquet", start, stop))
        assert all(len(p) <= 64 for p in parts)  # one row group at a time: bounded memory
        got = [i for p in parts for i in p.column("id").to_pylist()]
        assert got == ids[start:stop]
    # shards by row range cover every row exactly once
    cuts = [0, 77, 150, 233, n]
    covered = [i for a, b in zip(cuts[:-1], cuts[1:], strict=True) for p in data.iter_transfer(tmp_path / "t.parquet", a, b) for i in p.column("id").to_pylist()]
    assert covered == ids


def test_pseudo_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    reprs = rng.normal(size=(5, 8)).astype(np.float32)
    table = data.pseudo_table([f"p{i}" for i in range(5)], [f"t{i}" for i in range(5)], logits, reprs, {"layer": -1, "label_names": NAMES})
    data.write_table(table, tmp_path / "p.parquet")
    got, meta = data.read_pseudo(tmp_path / "p.parquet")
    assert meta["num_labels"] == 3 and meta["repr_dim"] == 8 and meta["layer"] == -1 and meta["label_names"] == NAMES
    assert got.column("teacher_label").to_pylist() == logits.argmax(1).tolist()
    np.testing.assert_array_equal(data.fixed_list_to_numpy(got.column("teacher_logits")), logits)
    np.testing.assert_allclose(data.fixed_list_to_numpy(got.column("teacher_repr")), reprs, rtol=1e-3, atol=1e-3)
    assert got.schema.field("teacher_repr").type.value_type == pa.float16()


def test_pseudo_contract_errors(tmp_path):
    logits = np.zeros((2, 3), np.float32)
    no_repr = data.pseudo_table(["a", "b"], ["x", "y"], logits, None, {})
    data.write_table(no_repr, tmp_path / "p.parquet")
    with pytest.raises(DataError, match="'teacher_repr' missing .*keep_repr"):
        data.read_pseudo(tmp_path / "p.parquet", columns=["id", "teacher_repr"])
    raw_write(tmp_path / "nologits.parquet", {"id": ["a"], "text": ["x"], "teacher_label": pa.array([0], pa.int64())})
    with pytest.raises(DataError, match=r"nologits.parquet: column 'teacher_logits' missing"):
        data.read_pseudo(tmp_path / "nologits.parquet")
    wide = pa.FixedSizeListArray.from_arrays(pa.array([0.0, 1.0], pa.float64()), 2)
    raw_write(tmp_path / "f64.parquet", {"id": ["a"], "text": ["x"], "teacher_label": pa.array([0], pa.int64()), "teacher_logits": wide})
    with pytest.raises(DataError, match="'teacher_logits' has type .*expected fixed_size_list<float32>"):
        data.read_pseudo(tmp_path / "f64.parquet")
    f32 = pa.FixedSizeListArray.from_arrays(pa.array([0.0, 1.0], pa.float32()), 2)
    raw_write(tmp_path / "r32.parquet", {"id": ["a"], "text": ["x"], "teacher_label": pa.array([0], pa.int64()),
                                         "teacher_logits": f32, "teacher_repr": f32})
    with pytest.raises(DataError, match="'teacher_repr' has type .*float16"):
        data.read_pseudo(tmp_path / "r32.parquet")
    raw_write(tmp_path / "lab32.parquet", {"id": ["a"], "text": ["x"], "teacher_label": pa.array([0], pa.int32()), "teacher_logits": f32})
    with pytest.raises(DataError, match="'teacher_label' has type int32, expected int64"):
        data.read_pseudo(tmp_path / "lab32.parquet")


# ---------------------------------------------------------------- validation errors

def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope.parquet: file not found"):
        data.read_labeled(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="expected a Parquet file, found a directory"):
        data.read_transfer(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file") as err:
        data.read_labeled(path)
    assert "\n" not in str(err.value)
    data.write_table(labeled(), tmp_path / "cut.parquet")  # truncated: the footer is gone
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "cut.parquet").read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        data.read_labeled(tmp_path / "cut.parquet")


@pytest.mark.parametrize("columns, message", [
    ({"id": ["a"], "label": pa.array([0], pa.int64())}, "column 'text' missing"),
    ({"id": ["a"], "text": ["x"]}, "column 'label' missing"),
    ({"id": ["a"], "text": ["x"], "label": ["sport"]}, "column 'label' has type string, expected int64"),
    ({"id": ["a"], "text": [3], "label": pa.array([0], pa.int64())}, "column 'text' has type int64, expected string"),
    ({"id": ["a", "b"], "text": ["x", None], "label": pa.array([0, 1], pa.int64())}, "column 'text' has 1 null values"),
    ({"id": ["a", "b"], "text": ["x", "  "], "label": pa.array([0, 1], pa.int64())}, "column 'text' has 1 empty values"),
    ({"id": pa.array([None, "b"], pa.string()), "text": ["x", "y"], "label": pa.array([0, 1], pa.int64())}, "column 'id' has 1 null values"),
    ({"id": ["a"], "text": ["x"], "label": pa.array([None], pa.int64())}, "column 'label' has 1 null values"),
    ({"id": ["a", "b"], "text": ["x", "y"], "label": pa.array([0, 3], pa.int64())}, r"column 'label' has value 3 outside 0..2"),
    ({"id": ["a"], "text": ["x"], "label": pa.array([-1], pa.int64())}, r"column 'label' has value -1 outside"),
])
def test_labeled_validation_errors(tmp_path, columns, message):
    path = raw_write(tmp_path / "split.parquet", columns, NAME_META)
    with pytest.raises(DataError, match=message) as err:
        data.read_labeled(path)
    assert str(err.value).startswith(str(path))


def test_missing_label_names_metadata(tmp_path):
    path = raw_write(tmp_path / "x.parquet", {"id": ["a"], "text": ["x"], "label": pa.array([0], pa.int64())})
    with pytest.raises(DataError, match="'distilflow.label_names' missing"):
        data.read_labeled(path)
    path = raw_write(tmp_path / "y.parquet", {"id": ["a"], "text": ["x"], "label": pa.array([0], pa.int64())},
                     {b"distilflow.label_names": b'"sport"'})
    with pytest.raises(DataError, match="not a list of names"):
        data.read_labeled(path)


def test_transfer_validation(tmp_path):
    path = raw_write(tmp_path / "t.parquet", {"id": ["a", "b"], "text": ["ok", ""]})
    with pytest.raises(DataError, match="t.parquet: column 'text' has 1 empty values"):
        data.read_transfer(path)
    with pytest.raises(DataError, match="column 'text' has 1 empty values"):
        list(data.iter_transfer(path))
    with pytest.raises(DataError, match="column 'id' missing"):
        data.transfer_rows(raw_write(tmp_path / "u.parquet", {"text": ["ok"]}))


def test_building_a_bad_table_fails():
    with pytest.raises(DataError, match="<new table>: column 'label' has value 5"):
        data.labeled_table(["a"], ["x"], [5], NAMES)
    with pytest.raises(DataError, match="<new table>: column 'text' has 1 empty values"):
        data.transfer_table(["a"], [" "])


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "f.parquet"
    with pytest.raises(RuntimeError):
        with data.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []
    data.write_json(tmp_path / "out" / "card.json", {"b": 1, "a": [1, 2]})
    with pytest.raises(RuntimeError):
        with data.atomic_path(tmp_path / "out" / "card.json") as tmp:
            tmp.write_text("{broken")
            raise RuntimeError
    assert (tmp_path / "out" / "card.json").read_text().startswith('{\n  "a"')  # the old file is intact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["card.json"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "data"
    with pytest.raises(ValueError):
        with data.atomic_dir(out) as tmp:
            data.write_table(labeled(), tmp / "train.parquet")
            raise ValueError("bad input found late")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with data.atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with data.atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # a failed rerun keeps the previous output
    with data.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp or .old dirs left


def test_published_files_get_umask_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with data.atomic_dir(tmp_path / "d") as tmp:
            data.write_table(labeled(), tmp / "train.parquet")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "train.parquet").stat().st_mode & 0o777 == 0o644


def test_read_splits_checks_every_split_against_the_first(tmp_path):
    from components.lib.contracts import token_data

    data.write_table(data.labeled_table(["1", "2"], ["a", "b"], [0, 1], ["x", "y"]), tmp_path / "train.parquet")
    data.write_table(data.labeled_table(["3"], ["c"], [1], ["x", "y"]), tmp_path / "dev.parquet")
    data.write_table(data.labeled_table(["4"], ["d"], [0], ["x", "z"]), tmp_path / "test.parquet")
    got = data.read_splits(tmp_path, ("train", "dev"), data.read_labeled)
    assert list(got) == ["train", "dev"] and got["dev"].label_names == ["x", "y"]
    with pytest.raises(DataError, match=r"test\.parquet: label names \['x', 'z'\] differ from train's \['x', 'y'\]"):
        data.read_splits(tmp_path, ("train", "dev", "test"), data.read_labeled)
    with pytest.raises(DataError, match="train.parquet"):  # the reader's own contract check still runs
        data.read_splits(tmp_path, ("train",), token_data.read_token_labeled)
