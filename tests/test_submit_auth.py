"""`distilflow submit` credentials, namespaces, local-path refusal and --wait, against the loopback
fake of the KFP REST API in tests/test_submit.py (real HTTP on 127.0.0.1, the real kfp.Client).

Every refusal is one line on stderr and exit 2, and nothing is submitted (no POST at all)."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest

import pipeline
from components.runner import cluster
from tests import test_submit

fake_kfp = test_submit.fake_kfp  # the loopback KFP API fixture, shared with tests/test_submit.py


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch):
    for var in (cluster.TOKEN_PATH_ENV, cluster.TOKEN_ENV, cluster.COOKIE_ENV):
        monkeypatch.delenv(var, raising=False)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


def posted(fake) -> list[str]:
    return [urlparse(p).path for m, p, _ in fake.requests if m == "POST"]


def multi_user(fake, token: str = "sa-token") -> None:
    fake.auth = {"Authorization": f"Bearer {token}"}
    fake.multi_user, fake.namespaces = True, {"team-a"}


# ---------------------------------------------------------------- credentials that work

def test_token_file_and_namespace_reach_every_request(fake_kfp, tmp_path, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    code = pipeline.main(["submit", "--host", host, "--namespace", "team-a", "--token-file", str(token)])
    assert code == 0, capsys.readouterr().err
    assert "run id: run-1234" in capsys.readouterr().out
    assert all(h.get("authorization") == "Bearer sa-token" for h in fake.seen_headers)
    experiment = next(b for m, p, b in fake.requests if m == "POST" and urlparse(p).path == "/apis/v2beta1/experiments")
    assert experiment["namespace"] == "team-a"
    assert posted(fake) == ["/apis/v2beta1/experiments", "/apis/v2beta1/runs"]


def test_token_path_from_the_kfp_sdk_variable(fake_kfp, tmp_path, monkeypatch, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    (tmp_path / "token").write_text("sa-token")
    monkeypatch.setenv(cluster.TOKEN_PATH_ENV, str(tmp_path / "token"))
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a"]) == 0, capsys.readouterr().err


def test_existing_token_and_proxy_cookie(fake_kfp, monkeypatch, capsys):
    host, fake = fake_kfp
    multi_user(fake, token="oidc-id-token")
    monkeypatch.setenv(cluster.TOKEN_ENV, "oidc-id-token")
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a"]) == 0, capsys.readouterr().err
    monkeypatch.delenv(cluster.TOKEN_ENV)
    fake.auth = {"Cookie": "oauth2_proxy_kubeflow=abc123"}
    monkeypatch.setenv(cluster.COOKIE_ENV, "oauth2_proxy_kubeflow=abc123")
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- refusals: one line, exit 2, nothing submitted

def test_missing_credentials_name_what_to_set(fake_kfp, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a"]) == 2
    err = one_line_error(capsys)
    assert f"{host}: the KFP API needs credentials (HTTP 401" in err
    assert "--token-file" in err and cluster.TOKEN_PATH_ENV in err and cluster.TOKEN_ENV in err and cluster.COOKIE_ENV in err
    assert posted(fake) == []


def test_auth_proxy_login_redirect_is_missing_credentials(fake_kfp, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    fake.login_redirect = True
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a"]) == 2
    assert "needs credentials (HTTP 302" in one_line_error(capsys) and posted(fake) == []


def test_rejected_token_names_where_it_came_from(fake_kfp, tmp_path, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    (tmp_path / "old").write_text("expired-token")
    assert pipeline.main(["submit", "--host", host, "--namespace", "team-a", "--token-file", str(tmp_path / "old")]) == 2
    err = one_line_error(capsys)
    assert f"rejected the token from --token-file {tmp_path / 'old'} (HTTP 401" in err and posted(fake) == []


def test_forbidden_is_a_rejection_too(fake_kfp, monkeypatch, capsys):
    host, fake = fake_kfp
    fake.fail = {"/apis/v2beta1/healthz": 403}
    monkeypatch.setenv(cluster.TOKEN_ENV, "t")
    assert pipeline.main(["submit", "--host", host]) == 2
    assert f"rejected the token in {cluster.TOKEN_ENV} (HTTP 403" in one_line_error(capsys)


def test_unreadable_token_file(fake_kfp, tmp_path, capsys):
    host, fake = fake_kfp
    assert pipeline.main(["submit", "--host", host, "--token-file", str(tmp_path / "nope")]) == 2
    err = one_line_error(capsys)
    assert f"--token-file {tmp_path / 'nope'}: cannot read the file" in err and fake.requests == []


def test_unknown_namespace(fake_kfp, tmp_path, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    (tmp_path / "t").write_text("sa-token")
    assert pipeline.main(["submit", "--host", host, "--namespace", "nope", "--token-file", str(tmp_path / "t")]) == 2
    err = one_line_error(capsys)
    assert "namespace 'nope' is unknown or not open to" in err and "HTTP 403" in err and "--namespace" in err
    assert posted(fake) == []


def test_multi_user_needs_a_namespace(fake_kfp, monkeypatch, capsys):
    host, fake = fake_kfp
    multi_user(fake)
    monkeypatch.setenv(cluster.TOKEN_ENV, "sa-token")
    assert pipeline.main(["submit", "--host", host]) == 2
    assert "multi-user Kubeflow needs --namespace" in one_line_error(capsys) and posted(fake) == []


def test_local_paths_are_refused_before_contacting_the_host(fake_kfp, tmp_path, capsys):
    host, fake = fake_kfp
    data = tmp_path / "train.csv"
    data.write_text("text,label\nhi,a\n")
    cases = {"data.source": str(data), "data.test_source": "../shared/data/imdb/test.parquet",
             "data.unlabeled_source": "extra.jsonl", "teacher.model": str(tmp_path),
             "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}
    for key, value in cases.items():
        assert pipeline.main(["submit", "--host", host, "--set", f"{key}={value}"]) == 2
        err = one_line_error(capsys)
        assert f"config key '{key}': {value} is a path on this machine" in err and "--allow-local-paths" in err
    assert fake.requests == []  # refused before the first request
    # URIs, datasets names, hub names and demos travel; --allow-local-paths is the opt-out
    ok = ["--set", "data.source=s3://bucket/train.parquet", "--set", "data.test_source=hf://datasets/o/r/test.csv",
          "--set", "data.unlabeled_source=stanfordnlp/imdb", "--set", "teacher.model=BAAI/bge-small-en-v1.5"]
    assert pipeline.main(["submit", "--host", host, *ok]) == 0, capsys.readouterr().err
    assert pipeline.main(["submit", "--host", host, "--allow-local-paths", "--set", f"data.source={data}"]) == 0


def test_language_sources_are_checked_by_index(fake_kfp, capsys):
    host, fake = fake_kfp
    langs = json.dumps([{"lang": "da", "source": "s3://b/da.conll", "test_source": "s3://b/da-test.conll"},
                        {"lang": "pt", "source": "s3://b/pt.conll", "test_source": "uner/pt_test.iob2"}])
    args = ["submit", "--host", host, "--set", "task=token-classification", "--set", f"data.languages={langs}"]
    assert pipeline.main(args) == 2
    assert "config key 'data.languages.1.test_source': uner/pt_test.iob2" in one_line_error(capsys)
    assert fake.requests == []


# ---------------------------------------------------------------- --wait

def test_wait_prints_task_states_and_exits_0_on_success(fake_kfp, capsys):
    host, fake = fake_kfp
    fake.run_states = [
        {"state": "PENDING", "tasks": {}},
        {"state": "RUNNING", "tasks": {"prepare-data": "RUNNING"}},
        {"state": "RUNNING", "tasks": {"prepare-data": "RUNNING"}},
        {"state": "RUNNING", "tasks": {"prepare-data": "SUCCEEDED", "finetune-teacher": "RUNNING"}},
        {"state": "SUCCEEDED", "tasks": {"prepare-data": "SUCCEEDED", "finetune-teacher": "SUCCEEDED",
                                         "close-parent-run": "SUCCEEDED"}},
    ]
    assert pipeline.main(["submit", "--host", host, "--wait", "--poll", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["run run-1234: PENDING", "  prepare-data: RUNNING", "run run-1234: RUNNING",
                         "  prepare-data: SUCCEEDED", "  finetune-teacher: RUNNING", "  finetune-teacher: SUCCEEDED",
                         "  close-parent-run: SUCCEEDED", "run run-1234: SUCCEEDED"]


def test_wait_exits_1_on_failure_with_the_error(fake_kfp, capsys):
    host, fake = fake_kfp
    fake.run_states = [{"state": "FAILED", "tasks": {"prepare-data": "FAILED", "close-parent-run": "SUCCEEDED"},
                        "error": {"code": 9, "message": "prepare-data: s3://b/x.csv: object not found"}}]
    assert pipeline.main(["submit", "--host", host, "--wait", "--poll", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "  prepare-data: FAILED" in out and "run run-1234: FAILED" in out and "object not found" in out


def test_wait_timeout_exits_1_and_says_the_run_goes_on(fake_kfp, capsys):
    host, fake = fake_kfp
    fake.run_states = [{"state": "RUNNING", "tasks": {"prepare-data": "RUNNING"}}]
    assert pipeline.main(["submit", "--host", host, "--wait", "--poll", "0.01", "--timeout", "0.2"]) == 1
    err = one_line_error(capsys)
    assert "run run-1234 is still RUNNING after 0.2 s" in err and f"{host}/#/runs/details/run-1234" in err
