"""Inputs on object storage: s3:// read through pyarrow.fs from a real S3 API (moto's server mode,
dev extra `moto[server]`, started as a subprocess on a free 127.0.0.1 port for the session and
stopped by its PID). A table and a CoNLL file read from s3://bucket/key give the same prepare-data
output as the local files; a missing bucket or object is one line naming the URI and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components import prepare_data
from components.lib.core.env import scoped_env
from components.lib.core.errors import DataError
from components.lib.settings.config import validate_config
from components.lib.sources import remote
from components.lib.sources.conll import write_conll
from components.lib.tracking import fingerprint
from tests.helpers import NER_TAGS, make_ner_sentences, make_topic_texts
from tests.mlflow_server import free_port

BUCKET = "distilflow-data"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; AWS_ENDPOINT_URL and dummy keys point pyarrow and boto3 at it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.fail("moto_server is not installed: pip install -e '.[dev]' (moto[server] is in the dev extra)")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    with scoped_env(**S3_ENV, AWS_ENDPOINT_URL=endpoint):
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(endpoint, timeout=1).close()
                    break
                except urllib.error.HTTPError:
                    break  # it answers
                except (urllib.error.URLError, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not start on {endpoint}")
                    time.sleep(0.2)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in S3_ENV.items() if k != "AWS_DEFAULT_REGION"},
                          region_name=S3_ENV["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=BUCKET)
    return client


def upload(s3, path: Path, key: str) -> str:
    s3.upload_file(str(path), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def outputs(d: Path) -> dict[str, pd.DataFrame]:
    """Every Parquet table prepare-data wrote, with the rows it wrote (metadata names sources: left out)."""
    return {p.name: pq.read_table(p).to_pandas() for p in sorted(d.glob("*.parquet"))}


def assert_same_outputs(local: Path, remote_dir: Path) -> None:
    a, b = outputs(local), outputs(remote_dir)
    assert a.keys() == b.keys() and {"train.parquet", "dev.parquet", "test.parquet", "transfer.parquet"} <= a.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
    hashes = [[s.get("sha256") for s in json.loads((d / "data_card.json").read_text())["sources"].values()]
              for d in (local, remote_dir)]
    assert hashes[0] == hashes[1]  # the same bytes were read


def test_csv_and_parquet_tables_from_s3_match_local(tmp_path, s3):
    texts, labels, names = make_topic_texts(30, seed=1)
    train = tmp_path / "train.csv"
    pd.DataFrame({"text": texts, "label": [names[y] for y in labels]}).to_csv(train, index=False)
    t_texts, t_labels, _ = make_topic_texts(8, seed=2)
    test = tmp_path / "test.parquet"
    pd.DataFrame({"text": t_texts, "label": [names[y] for y in t_labels]}).to_parquet(test)

    def run(source: str, test_source: str, out: str) -> Path:
        cfg = validate_config({"work_dir": str(tmp_path / "work"), "tracking": {"enabled": False}, "data": {
            "source": source, "test_source": test_source, "labels_per_class": 5, "dev_per_class": 3,
            "output_dir": str(tmp_path / out)}})
        return Path(prepare_data.run(cfg).data_dir)

    local = run(str(train), str(test), "local")
    from_s3 = run(upload(s3, train, "topics/train.csv"), upload(s3, test, "topics/test.parquet"), "s3")
    assert_same_outputs(local, from_s3)
    card = json.loads((from_s3 / "data_card.json").read_text())
    assert card["sources"]["train"]["path"] == f"s3://{BUCKET}/topics/train.csv"


def test_conll_from_s3_matches_local(tmp_path, s3):
    sents, tags, _ = make_ner_sentences(60, seed=4)
    pairs = [(w, [NER_TAGS[t] for t in row]) for w, row in zip(sents, tags, strict=True)]
    write_conll(pairs[:45], tmp_path / "train.conll")
    write_conll(pairs[45:], tmp_path / "test.iob")

    def run(source: str, test_source: str, out: str) -> Path:
        cfg = validate_config({"task": "token-classification", "work_dir": str(tmp_path / "work"),
                               "tracking": {"enabled": False}, "data": {
                                   "source": source, "test_source": test_source, "train_sentences": 20,
                                   "dev_sentences": 10, "output_dir": str(tmp_path / out)}})
        return Path(prepare_data.run(cfg).data_dir)

    local = run(str(tmp_path / "train.conll"), str(tmp_path / "test.iob"), "local")
    from_s3 = run(upload(s3, tmp_path / "train.conll", "ner/train.conll"), upload(s3, tmp_path / "test.iob", "ner/test.iob"), "s3")
    assert_same_outputs(local, from_s3)


def test_language_entries_read_from_s3(tmp_path, s3):
    sents, tags, _ = make_ner_sentences(50, seed=6)
    pairs = [(w, [NER_TAGS[t] for t in row]) for w, row in zip(sents, tags, strict=True)]
    write_conll(pairs[:40], tmp_path / "da.conll")
    write_conll(pairs[40:], tmp_path / "da_test.conll")
    langs = [{"lang": "da", "source": upload(s3, tmp_path / "da.conll", "uner/da.conll"),
              "test_source": upload(s3, tmp_path / "da_test.conll", "uner/da_test.conll")}]
    cfg = validate_config({"task": "token-classification", "work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
                           "data": {"languages": langs, "train_sentences": 10, "dev_sentences": 5,
                                    "output_dir": str(tmp_path / "out")}})
    result = prepare_data.run(cfg)
    assert result.rows["test"] == 10
    assert set(pq.read_table(Path(result.data_dir) / "train.parquet").column("lang").to_pylist()) == {"da"}


@pytest.mark.parametrize("uri,message", [
    (f"s3://{BUCKET}/nope/train.csv", "object not found"),
    ("s3://no-such-bucket/train.csv", "bucket 'no-such-bucket' not found"),
    (f"s3://{BUCKET}/nope/train.conll", "object not found"),
], ids=["missing-object", "missing-bucket", "missing-conll"])
def test_missing_bucket_or_object_is_one_line_exit_2(uri, message, tmp_path, s3, capsys):
    task = ["--set", "task=token-classification"] if uri.endswith(".conll") else []
    code = prepare_data.main([*task, "--set", f"data.source={uri}", "--set", f"work_dir={tmp_path}",
                              "--set", "tracking.enabled=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err == f"error: {uri}: {message}"
    assert not (tmp_path / "data").exists()


def test_remote_helpers(s3, tmp_path):
    assert remote.is_remote("s3://b/k") and remote.is_remote("HTTPS://x/y.csv") and not remote.is_remote("../data/x.csv")
    assert remote.suffix("https://host/data/train.parquet?download=1") == ".parquet"
    assert [remote.is_local_path(s) for s in ("imdb", "stanfordnlp/imdb", "BAAI/bge-small-en-v1.5", "demo:bbc-news",
                                               "models:/m@champion", "x.csv", "../d", "sqlite:///m.db")] == \
        [False, False, False, False, False, True, True, True]
    (tmp_path / "a.txt").write_text("one")
    uri = upload(s3, tmp_path / "a.txt", "digest/a.txt")
    first = fingerprint.ref_digest(uri, None)
    assert fingerprint.ref_digest(uri, None) == first  # unchanged object: the local cache is reused
    (tmp_path / "a.txt").write_text("three")
    upload(s3, tmp_path / "a.txt", "digest/a.txt")
    assert fingerprint.ref_digest(uri, None) != first  # a new object under the same key: re-run
    with pytest.raises(DataError, match="expected s3://bucket/key"):
        with remote.local_copy("s3://only-bucket"):
            pass


def test_https_table_through_fsspec_and_a_missing_url(tmp_path, capsys):
    """http(s):// goes through fsspec; a real http.server on 127.0.0.1 serves the file."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    texts, labels, names = make_topic_texts(30, seed=1)
    served = tmp_path / "www"
    served.mkdir()
    pd.DataFrame({"text": texts, "label": [names[y] for y in labels]}).to_csv(served / "train.csv", index=False)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        def run(source: str, out: str) -> Path:
            cfg = validate_config({"work_dir": str(tmp_path / "work"), "tracking": {"enabled": False}, "data": {
                "source": source, "labels_per_class": 5, "dev_per_class": 3, "output_dir": str(tmp_path / out)}})
            return Path(prepare_data.run(cfg).data_dir)

        assert_same_outputs(run(str(served / "train.csv"), "local"), run(f"{base}/train.csv", "http"))
        code = prepare_data.main(["--set", f"data.source={base}/missing.csv", "--set", f"work_dir={tmp_path}",
                                  "--set", "tracking.enabled=false"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"error: {base}/missing.csv: not found"
    finally:
        server.shutdown()
        server.server_close()
