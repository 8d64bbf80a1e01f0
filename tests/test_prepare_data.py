"""prepare-data on tiny generated sources: counts, determinism, dedupe/overlap, cleaning,
every ingestion path, user errors (and nothing left behind), the CLI, the BBC demo, MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components import prepare_data
from components.lib.contracts import data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PROJECT_ROOT, validate_config
from components.lib.sources.splits import clean_texts
from components.prepare_data import SPLITS
from tests.helpers import make_topic_texts

NAMES = ["sport", "tech", "money"]  # make_topic_texts' label order


def frame(n_per_class: int, seed: int, ids: bool = False) -> pd.DataFrame:
    texts, labels, _ = make_topic_texts(n_per_class, seed=seed)
    df = pd.DataFrame({"text": texts, "label": labels})
    if ids:
        df.insert(0, "id", [1000 + i for i in range(len(df))])
    return df


def sources(tmp_path: Path, train: int = 30, test: int = 10, unlabeled: int = 40) -> dict[str, str]:
    """train/test/unlabeled Parquet files of the topic task; returns data.* settings naming them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    frame(train, seed=1, ids=True).to_parquet(tmp_path / "train.parquet")
    frame(test, seed=2).to_parquet(tmp_path / "test.parquet")
    u = frame(unlabeled, seed=3).head(unlabeled).assign(label=-1)  # IMDB-style: label -1 = none
    u.to_parquet(tmp_path / "unsup.parquet")
    return {"source": str(tmp_path / "train.parquet"), "test_source": str(tmp_path / "test.parquet"),
            "unlabeled_source": str(tmp_path / "unsup.parquet"), "label_names": NAMES}


def config(tmp_path: Path, out: str = "out", **data_keys):
    return validate_config({
        "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
        "data": {"labels_per_class": 5, "dev_per_class": 3, "output_dir": str(tmp_path / out), **data_keys},
    })


def read_all(d: Path) -> dict[str, pd.DataFrame]:
    out = {s: data.read_labeled(d / f"{s}.parquet").table.to_pandas() for s in ("train", "dev", "test")}
    out["transfer"] = data.read_transfer(d / "transfer.parquet").to_pandas()
    return out


def card(d: Path) -> dict:
    return json.loads((d / "data_card.json").read_text())


# ---------------------------------------------------------------- the split

def test_exact_counts_and_contract(tmp_path):
    cfg = config(tmp_path, **sources(tmp_path / "src"))
    result = prepare_data.run(cfg)
    assert result.rows == {"train": 15, "dev": 9, "test": 30, "transfer": 90 - 24 + 40}
    tables = read_all(cfg.data_dir)
    assert tables["train"]["label"].value_counts().to_dict() == {0: 5, 1: 5, 2: 5}
    assert tables["dev"]["label"].value_counts().to_dict() == {0: 3, 1: 3, 2: 3}
    assert data.read_labeled(cfg.data_dir / "train.parquet").label_names == NAMES
    ids = pd.concat([t["id"] for t in tables.values()])
    assert ids.is_unique and set(ids.str.split("/").str[0]) == {"train", "test", "unsup"}
    assert tables["train"]["id"].iloc[0].startswith("train/10")  # the source's id column
    c = card(cfg.data_dir)
    assert c["class_counts"]["train"] == {"sport": 5, "tech": 5, "money": 5}
    assert c["transfer"] == {"from_train": 66, "from_unlabeled": 40, "capped": 0}
    assert c["sources"]["train"]["sha256"] == data.sha256_file(tmp_path / "src" / "train.parquet")
    assert c["files"]["train.parquet"] == data.sha256_file(cfg.data_dir / "train.parquet")
    assert all(v == 0 for v in c["checks"].values())
    # The train -> transfer rows really lost their labels, and no labeled text is repeated there.
    assert set(tables["transfer"].columns) == {"id", "text"}
    assert not set(tables["transfer"]["text"]) & (set(tables["train"]["text"]) | set(tables["dev"]["text"]))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    src = sources(tmp_path / "src")
    a = prepare_data.run(config(tmp_path, "a", **src))
    b = prepare_data.run(config(tmp_path, "b", **src))
    c = prepare_data.run(config(tmp_path, "c", seed=99, **src))
    for split in SPLITS:
        sha = [data.sha256_file(Path(r.data_dir) / f"{split}.parquet") for r in (a, b, c)]
        assert sha[0] == sha[1], split
        if split != "test":  # the official test split does not depend on the seed
            assert sha[0] != sha[2], split
    assert (Path(a.data_dir) / "data_card.json").read_text() == (Path(b.data_dir) / "data_card.json").read_text().replace(b.data_dir, a.data_dir)


def test_dev_fixed_and_train_nested_as_n_grows(tmp_path):
    src = sources(tmp_path / "src")
    small = read_all(Path(prepare_data.run(config(tmp_path, "n3", labels_per_class=3, **src)).data_dir))
    big = read_all(Path(prepare_data.run(config(tmp_path, "n8", labels_per_class=8, **src)).data_dir))
    assert small["dev"].equals(big["dev"])
    assert set(small["train"]["id"]) < set(big["train"]["id"])


def test_dev_never_exceeds_train_unless_set(tmp_path, caplog):
    """The low-resource default: dev per class is min(10, labels_per_class); an explicit larger dev is
    honoured, warned about, and the data card records both budgets either way."""
    src = sources(tmp_path / "src")
    small = prepare_data.run(config(tmp_path, "n2", labels_per_class=2, dev_per_class=None, **src))
    assert small.rows["dev"] == 2 * len(NAMES) and small.rows["train"] == 2 * len(NAMES)
    assert card(Path(small.data_dir))["budgets"] == {"train_per_class": 2, "dev_per_class": 2, "dev_set_explicitly": False,
                                                    "dev_above_train": False}
    big = prepare_data.run(config(tmp_path, "n12", labels_per_class=12, dev_per_class=None, **src))
    assert big.rows["dev"] == 10 * len(NAMES)  # capped at 10 per class
    explicit = prepare_data.run(config(tmp_path, "explicit", labels_per_class=2, dev_per_class=4, **src))
    assert explicit.rows["dev"] == 4 * len(NAMES)
    assert card(Path(explicit.data_dir))["budgets"]["dev_above_train"] is True
    assert "data.dev_per_class 4 > data.labels_per_class 2" in caplog.text


def test_all_labels_and_transfer_cap(tmp_path):
    src = sources(tmp_path / "src")
    full = prepare_data.run(config(tmp_path, "all", labels_per_class=None, **src))
    assert full.rows["train"] == 90 - 9 and full.rows["transfer"] == 40
    capped = prepare_data.run(config(tmp_path, "cap", max_transfer_rows=25, **src))
    assert capped.rows["transfer"] == 25 and card(Path(capped.data_dir))["transfer"]["capped"] == 106 - 25


def test_held_out_test_is_stratified(tmp_path):
    frame(40, seed=1).to_parquet(tmp_path / "all.parquet")
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "all.parquet"), test_fraction=0.25))
    tables = read_all(Path(result.data_dir))
    assert tables["test"]["label"].value_counts().to_dict() == {0: 10, 1: 10, 2: 10}
    assert result.rows == {"train": 15, "dev": 9, "test": 30, "transfer": 120 - 30 - 24}
    assert card(Path(result.data_dir))["sources"]["test"]["held_out_from"] == "train"
    assert tables["test"]["id"].str.startswith("train/").all()  # held out rows keep their source ids


# ---------------------------------------------------------------- duplicates, overlap, cleaning

def leaky_sources(tmp_path: Path) -> dict[str, str]:
    src = sources(tmp_path)
    train = pd.read_parquet(src["source"])
    test = pd.read_parquet(src["test_source"])
    unsup = pd.read_parquet(src["unlabeled_source"])
    # 4 train texts and 2 unlabeled texts also in test; 3 exact train duplicates (one only after
    # cleaning: extra spaces); 5 unlabeled texts repeating train texts.
    test = pd.concat([test, train.iloc[:4].drop(columns="id")], ignore_index=True)
    dup = train.iloc[10:13].assign(id=[1, 2, 3])
    dup.loc[dup.index[0], "text"] = "  " + dup["text"].iloc[0].replace(" ", "   ") + " "
    train = pd.concat([train, dup], ignore_index=True)
    unsup = pd.concat([unsup, test.iloc[:2].assign(label=-1), train.iloc[20:25].drop(columns="id").assign(label=-1)], ignore_index=True)
    train.to_parquet(src["source"])
    test.to_parquet(src["test_source"])
    unsup.to_parquet(src["unlabeled_source"])
    return src


def test_duplicates_and_overlap_dropped_and_counted(tmp_path):
    result = prepare_data.run(config(tmp_path, **leaky_sources(tmp_path / "src")))
    c = card(Path(result.data_dir))
    assert c["removed"]["duplicates"] == {"train": 3, "test": 0, "unlabeled": 0, "unlabeled_in_train": 5}
    assert c["removed"]["overlap_with_test"] == {"train": 4, "unlabeled": 2}
    assert result.overlap_removed == 6 and result.duplicates_removed == 8
    tables = read_all(Path(result.data_dir))
    test = set(tables["test"]["text"])
    for split in ("train", "dev", "transfer"):
        assert not set(tables[split]["text"]) & test, split
    everything = pd.concat([t["text"] for t in tables.values()])
    assert everything.is_unique
    assert result.rows["test"] == 34 and result.rows["transfer"] == (90 - 4) - 24 + 40


def test_overlap_fail_is_an_error_and_writes_nothing(tmp_path):
    cfg = config(tmp_path, on_overlap="fail", **leaky_sources(tmp_path / "src"))
    with pytest.raises(DataError, match=r"4 train texts are also in the test split \(e.g. train/\d+\); set data.on_overlap=drop"):
        prepare_data.run(cfg)
    assert not cfg.data_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_clean_texts():
    raw = pd.Series(["Great<br /><br />movie &amp; fun", "a < b > c", "x\u00a0\t\n y", "<i>Bold</i>&nbsp;end", "5 &lt;br&gt; 6"])
    assert clean_texts(raw, True, True).tolist() == ["Great movie & fun", "a < b > c", "x y", "Bold end", "5 <br> 6"]
    assert clean_texts(raw, False, True).tolist()[0] == "Great<br /><br />movie &amp; fun"
    assert clean_texts(raw, True, False).tolist()[0] == "Great  movie & fun"


def test_cleaning_in_the_step(tmp_path):
    df = frame(12, seed=1)
    df.loc[0, "text"] = "<br /><br />"  # nothing left after cleaning: dropped and counted
    df.loc[1, "text"] = "Loved it.<br /><br />Would watch &quot;again&quot;"
    df.to_csv(tmp_path / "t.csv", index=False)
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "t.csv"), label_names=NAMES, labels_per_class=2, dev_per_class=1))
    texts = set(pd.concat([t["text"] for t in read_all(Path(result.data_dir)).values()]))
    assert 'Loved it. Would watch "again"' in texts and not any("<br" in t for t in texts)
    assert card(Path(result.data_dir))["removed"]["emptied_by_cleaning"]["train"] == 1


# ---------------------------------------------------------------- ingestion

def test_csv_string_labels_inferred_names(tmp_path):
    df = frame(10, seed=1)
    df["label"] = [NAMES[i] for i in df["label"]]
    df.to_csv(tmp_path / "d.csv", index=False)
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "d.csv"), labels_per_class=2, dev_per_class=1))
    assert result.label_names == sorted(NAMES)  # no names given: the sorted raw values
    train = read_all(Path(result.data_dir))["train"]
    assert train["id"].str.fullmatch(r"train/\d+").all()  # no id column: the source row index
    by_text = dict(zip(df["text"], df["label"], strict=True))
    assert all(sorted(NAMES)[y] == by_text[t] for t, y in zip(train["text"], train["label"], strict=True))


def test_jsonl_with_label_map_and_columns(tmp_path):
    df = frame(10, seed=1).rename(columns={"text": "review", "label": "stars"})
    df["stars"] = df["stars"] + 1  # raw values 1, 2, 3
    df["review"] = df["review"].astype(str)
    df.loc[0, "review"] = "2020-01-01"  # must stay a string, not become a date
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    result = prepare_data.run(config(
        tmp_path, source=str(tmp_path / "d.jsonl"), text_column="review", label_column="stars",
        label_map={"1": "sport", "2": "tech", "3": "money"}, labels_per_class=2, dev_per_class=1))
    assert result.label_names == NAMES
    tables = read_all(Path(result.data_dir))
    texts = pd.concat([t["text"] for t in tables.values()])
    assert "2020-01-01" in set(texts) and len(texts) == 30
    truth = dict(zip(df["review"], df["stars"] - 1, strict=True))
    assert all(truth[t] == y for t, y in zip(tables["train"]["text"], tables["train"]["label"], strict=True))


def test_non_unique_ids_are_qualified(tmp_path):
    df = frame(10, seed=1)
    df.insert(0, "id", df.groupby("label").cumcount())  # ids repeat across classes, like IMDB's pos/0 and neg/0
    df.to_parquet(tmp_path / "d.parquet")
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "d.parquet"), label_names=NAMES, labels_per_class=2, dev_per_class=1))
    ids = pd.concat([t["id"] for t in read_all(Path(result.data_dir)).values()])
    assert card(Path(result.data_dir))["ids"]["train"] == "label/id"
    assert ids.is_unique and ids.str.fullmatch(r"train/(sport|tech|money)/\d").all()
    df.assign(id="same").to_parquet(tmp_path / "d.parquet")  # hopeless ids: the row index
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "d.parquet"), label_names=NAMES, labels_per_class=2, dev_per_class=1))
    assert card(Path(result.data_dir))["ids"]["train"] == "row"


def test_file_format_errors(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"text,label\n\xff\xfe broken \x00,1\n")
    (tmp_path / "d.txt").write_text("text,label\n")
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n{not json\n')
    cases = [
        ({"source": str(tmp_path / "d.csv")}, "d.csv: not a readable CSV file"),
        ({"source": str(tmp_path / "d.txt")}, r"d.txt: cannot tell the file format from suffix '.txt' \(set data.format"),
        ({"source": str(tmp_path / "d.jsonl")}, r"d.jsonl:2: not valid JSON \(Expecting property name"),
        ({"source": str(tmp_path)}, "cannot load as a Hugging Face dataset"),
        ({"source": "someone/no-such-dataset"}, "someone/no-such-dataset: cannot load as a Hugging Face dataset"),
    ]
    for keys, message in cases:
        with pytest.raises(DataError, match=message) as err:
            prepare_data.run(config(tmp_path, **keys))
        assert "\n" not in str(err.value)
    frame(10, seed=1).to_csv(tmp_path / "d.txt", index=False)  # an explicit format reads any suffix
    assert prepare_data.run(config(tmp_path, source=str(tmp_path / "d.txt"), format="csv", labels_per_class=2, dev_per_class=1)).rows["train"] == 6


def test_local_datasets_dict_with_classlabel(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    tr, te = frame(10, seed=1), frame(4, seed=2)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(tr, features=features, preserve_index=False),
        "test": datasets.Dataset.from_pandas(te, features=features, preserve_index=False),
    })
    dd.save_to_disk(str(tmp_path / "ds"))
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "ds"), labels_per_class=2, dev_per_class=1))
    assert result.label_names == NAMES and result.rows == {"train": 6, "dev": 3, "test": 12, "transfer": 21}
    c = card(Path(result.data_dir))
    assert c["label_origin"].endswith("class names") and c["sources"]["test"]["split"] == "test"
    assert len(c["sources"]["train"]["sha256"]) == 64


def test_local_single_dataset_holds_out_test(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    datasets.Dataset.from_pandas(frame(10, seed=1), features=features, preserve_index=False).save_to_disk(str(tmp_path / "ds"))
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "ds"), labels_per_class=2, dev_per_class=1, test_fraction=0.2))
    assert result.rows["test"] == 6 and result.rows["train"] == 6


def test_demo_bbc_news(tmp_path):
    result = prepare_data.run(config(tmp_path, source="demo:bbc-news", labels_per_class=20, dev_per_class=10))
    c = card(Path(result.data_dir))
    assert result.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert c["sources"]["train"]["rows"] == 2225
    removed = c["removed"]["duplicates"]["train"] + c["removed"]["emptied_by_cleaning"]["train"]
    assert sum(result.rows.values()) + removed == 2225
    assert result.rows["train"] == 100 and result.rows["dev"] == 50
    tables = read_all(Path(result.data_dir))
    assert tables["train"]["id"].str.fullmatch(r"bbc-news/(business|entertainment|politics|sports|tech)/\d{3}").all()
    assert (tables["train"]["id"].str.split("/").str[1] == [result.label_names[y] for y in tables["train"]["label"]]).all()


# ---------------------------------------------------------------- user errors

def broken(tmp_path: Path, case: str) -> dict:
    df = frame(10, seed=1)
    tmp_path.mkdir()
    path = tmp_path / "d.parquet"
    if case == "null_text":
        df["text"] = df["text"].astype(object)
        df.loc[3, "text"] = None
    elif case == "empty_text":
        df.loc[3, "text"] = "   "
    elif case == "int_text":
        df["text"] = range(len(df))
    elif case == "label_range":
        df.loc[2, "label"] = 7
    elif case == "corrupt":
        path.write_bytes(b"PAR1 garbage")
        return {"source": str(path)}
    df.to_parquet(path)
    return {"source": str(path), "label_names": NAMES}


@pytest.mark.parametrize("case, keys, message", [
    ("missing", {"source": "nope/d.parquet"}, r"nope/d.parquet: file not found"),
    ("corrupt", {}, r"d.parquet: not a readable Parquet file"),
    ("ok", {"text_column": "body"}, r"d.parquet: column 'body' missing \(set data.text_column"),
    ("ok", {"label_column": "y"}, r"d.parquet: column 'y' missing \(set data.label_column"),
    ("null_text", {}, r"column 'text' has 1 null values \(first at row 3\)"),
    ("empty_text", {}, r"column 'text' has 1 empty values"),
    ("int_text", {}, r"column 'text' holds integer values, expected text"),
    ("label_range", {}, r"column 'label' has value 7 outside 0..2"),
    ("ok", {"label_names": ["sport", "tech"]}, r"column 'label' has value 2 outside 0..1"),
    ("ok", {"labels_per_class": 9, "dev_per_class": 2}, r"class 'sport' has 8 examples .* = 11"),
    ("ok", {"label_map": {"0": "a", "1": "b"}, "label_names": None}, r"column 'label' has value 2 not among the label names \['a', 'b'\] \(data.label_map\)"),
    ("ok", {"label_map": {"0": "a"}, "label_names": ["b"]}, r"data.label_map.*'a', not in data.label_names"),
    ("ok", {"source": "demo:cats"}, r"unknown demo"),
])
def test_user_errors_name_the_culprit_and_leave_nothing(tmp_path, case, keys, message):
    cfg = config(tmp_path, **{**broken(tmp_path / "src", case), "labels_per_class": 2, "dev_per_class": 1, **keys})
    with pytest.raises(UserError, match=message) as err:
        prepare_data.run(cfg)
    assert "\n" not in str(err.value)
    assert not cfg.data_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_label_outside_names_in_test_source(tmp_path):
    src = sources(tmp_path / "src")
    test = pd.read_parquet(src["test_source"])
    test.loc[0, "label"] = 3
    test.to_parquet(src["test_source"])
    with pytest.raises(DataError, match=r"test.parquet: column 'label' has value 3 outside 0..2"):
        prepare_data.run(config(tmp_path, **src))


# ---------------------------------------------------------------- CLI and tracking

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.prepare_data", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
    src = sources(tmp_path / "src")
    sets = [f"data.{k}={v}" for k, v in src.items() if k != "label_names"] + [
        "data.label_names=[sport, tech, money]", "data.labels_per_class=4", "data.dev_per_class=2",
        f"data.output_dir={tmp_path / 'out'}", "tracking.enabled=false"]
    ok = cli(*[a for s in sets for a in ("--set", s)])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"]["train"] == 12
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data_card.json", "dev.parquet", "test.parquet", "train.parquet", "transfer.parquet"]
    bad = cli(*[a for s in [*sets, "data.text_column=body", f"data.output_dir={tmp_path / 'bad'}"] for a in ("--set", s)])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "column 'body' missing" in lines[0] and not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_logs_to_mlflow(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, **sources(tmp_path / "src")).with_overrides({"tracking.enabled": True, "tracking.uri": uri})
    result = prepare_data.run(cfg)
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["distilflow.step"] == "prepare-data"
    assert run.data.params["data.labels_per_class"] == "5" and run.data.metrics["rows_train"] == 15
    arts = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(result.run_id, "data")]
    assert arts == ["data/data_card.json"]
    assert pq.ParquetFile(Path(result.data_dir) / "transfer.parquet").metadata.num_rows == result.rows["transfer"]
