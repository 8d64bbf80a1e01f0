"""The whole DAG under kfp.local on configs/tiny.yaml (a 2-layer BERT, a few hundred synthetic
rows), its cache (reused when nothing changed, invalidated by code, data and checkpoints), the
MLflow parent/child runs and the registered model; plus unit tests of the pieces it uses."""

from __future__ import annotations

import csv
import json
import logging
import threading
from pathlib import Path

import pytest

import pipeline
from components.lib.settings.config import PROJECT_ROOT, load_config
from components.lib.tracking import fingerprint
from components.runner.summary import summary_table
from tests.helpers import make_topic_texts

TINY = PROJECT_ROOT / "configs" / "tiny.yaml"


def write_topics_csv(path: Path, n_per_class: int = 60, seed: int = 1) -> Path:
    texts, labels, names = make_topic_texts(n_per_class, seed=seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([t, names[y]] for t, y in zip(texts, labels, strict=True))
    return path


@pytest.fixture()
def tiny_env(tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.setenv("DISTILFLOW_TINY_DATA", str(write_topics_csv(tmp_path / "topics.csv")))
    monkeypatch.setenv("DISTILFLOW_TINY_TEACHER", str(tiny_bert_dir))
    monkeypatch.setenv("DISTILFLOW_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# ---------------------------------------------------------------- unit: cache salts, summary

def test_cache_salts_follow_data_teacher_and_code(tiny_env, tiny_bert_dir, copy_dir):
    cfg = load_config(TINY)
    salts = fingerprint.cache_salts(cfg)
    assert salts == fingerprint.cache_salts(load_config(TINY))  # stable
    # the data file's bytes: prepare-data (and through its new output URI, everything after)
    write_topics_csv(tiny_env / "topics.csv", seed=2)
    changed = fingerprint.cache_salts(load_config(TINY))
    assert changed["prepare-data"] != salts["prepare-data"] and changed["evaluate"] == salts["evaluate"]
    # the checkpoint's bytes: finetune-teacher
    teacher = copy_dir(tiny_bert_dir, "teacher")
    before = fingerprint.cache_salts(cfg.with_overrides({"teacher.model": str(teacher)}))
    (teacher / "config.json").write_text((teacher / "config.json").read_text().replace("}", ', "x": 1}', 1))
    after = fingerprint.cache_salts(cfg.with_overrides({"teacher.model": str(teacher)}))
    assert after["finetune-teacher"] != before["finetune-teacher"] and after["prepare-data"] == before["prepare-data"]


def test_code_digest_sees_package_edits(tmp_path):
    (tmp_path / "components").mkdir()
    module = tmp_path / "components" / "step.py"
    module.write_text("x = 1\n")
    first = fingerprint.code_digest(tmp_path)
    module.write_text("x = 2\n")
    assert fingerprint.code_digest(tmp_path) != first


def test_moving_registry_refs_are_never_reused(tmp_path):
    cfg = load_config(TINY, [f"tracking.uri=sqlite:///{tmp_path}/m.db", f"work_dir={tmp_path}"])
    ref = "models:/no-such-model@champion"
    assert fingerprint.ref_digest(ref, cfg) != fingerprint.ref_digest(ref, cfg)
    assert fingerprint.ref_digest("runs:/abc/model", cfg) == fingerprint.ref_digest("runs:/abc/model", cfg)


def test_summary_table_rows():
    report = {
        "teacher": {"accuracy": 0.95, "macro_f1": 0.94, "params": 22_700_000, "throughput": 40.0},
        "student": {"mode": "soft+repr", "accuracy": 0.93, "params": 2_430_000, "throughput": 600.0},
        "students": {
            "soft+repr": {"accuracy": 0.93, "macro_f1": 0.92, "params": 2_430_000, "throughput": 600.0},
            "labels-only": {"accuracy": 0.71, "macro_f1": 0.70, "params": 2_430_000, "throughput": 610.0},
        },
        "retention": 0.979,
    }
    table = summary_table(report)
    assert "student (soft+repr)" in table and "baseline (labels-only)" in table
    row = next(line for line in table.splitlines() if line.startswith("student"))
    assert "0.930" in row and "2.43M" in row and "9.3x" in row and "15.0x" in row
    assert "retention (student/teacher accuracy): 0.979" in table
    assert "TF-IDF" not in table  # a report without the classic baseline has no row for it
    report["tfidf"] = {"accuracy": 0.88, "macro_f1": 0.87, "params": 45_400, "throughput": 20_000.0}
    rows = summary_table(report).splitlines()
    assert [r.split("  ")[0] for r in rows[2:6]] == ["teacher", "baseline (TF-IDF + LR)", "student (soft+repr)",
                                                     "baseline (labels-only)"]
    assert "0.880" in rows[3] and "0.05M" in rows[3] and "500.0x" in rows[3]


def test_run_console_parses_kfp_local_records(tmp_path, capsys):
    from components.runner.console import RunConsole

    log = RunConsole(tmp_path / "run.log", verbose=False, hidden=("publish-outputs",))
    msgs = ["Executing task \x1b[96m'evaluate'\x1b[0m", "Task prepare-data cache hit (key=ab12); skipping execution.",
            "Task \x1b[96m'evaluate'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m", "Executing task 'publish-outputs'"]
    shown = [log.filter(logging.LogRecord("root", logging.INFO, __file__, 1, msg, None, None)) for msg in msgs]
    log.write("a line a step printed")
    log.close()
    assert log.executed == ["evaluate", "publish-outputs"] and log.cached == ["prepare-data"]
    assert shown == [False] * 4  # quiet: kfp's own records never reach its handler
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(None, 1)[1] for line in lines] == [
        "evaluate                     started", "prepare-data                 cached: outputs reused from an earlier run",
        "evaluate                     done in 0.0 s"]
    text = (tmp_path / "run.log").read_text()
    assert "Executing task 'evaluate'" in text and "a line a step printed" in text and "\x1b" not in text


def test_run_console_numbers_a_parallel_for_s_runs(tmp_path, capsys):
    """Two shards of one ParallelFor task run in two threads under one name: each line says which,
    the second's end (logged in its own thread) is matched to its own start, and a failed shard's
    tail holds only what that shard printed."""
    from components.runner.console import RunConsole

    log = RunConsole(tmp_path / "run.log", verbose=False, repeats={"shard-task": 2})
    name = "'shard-task'"
    started = [threading.Event(), threading.Event()]
    second_done = threading.Event()

    def record(msg: str) -> None:
        log.filter(logging.LogRecord("root", logging.INFO, __file__, 1, msg, None, None))

    def first():
        record(f"Executing task {name}")
        log.write("first shard's line")
        started[0].set()
        second_done.wait(5)
        record(f"Task {name} finished with status FAILURE")

    def second():
        started[0].wait(5)
        record(f"Executing task {name}")
        log.write("second shard's line")
        record(f"Task {name} finished with status SUCCESS")
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    log.close()
    lines = [line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert [line.rsplit(" in ", 1)[0] for line in lines] == [
        "shard-task [1/2]             started", "shard-task [2/2]             started",
        "shard-task [2/2]             done", "shard-task [1/2]             failure"]
    assert log.executed == ["shard-task", "shard-task"] and log.unfinished() == ["shard-task [1/2]"]
    assert log.tail("shard-task [1/2]") == "first shard's line"


# ---------------------------------------------------------------- integration: the whole DAG

@pytest.mark.integration
def test_whole_pipeline_under_kfp_local_then_cached(tiny_env, capsys, monkeypatch):
    import mlflow

    # Pin the code digest: an edit to the package between the two runs would (rightly) invalidate
    # the cache; test_code_digest_sees_package_edits covers that part.
    monkeypatch.setattr(fingerprint, "code_digest", lambda root=None: "pinned-for-this-test")
    cfg = load_config(TINY)
    first = pipeline.run_local(cfg)
    out = capsys.readouterr().out
    work = tiny_env / "work"
    report_path = work / "eval" / "report.json"
    assert first["report"] == str(report_path) and f"report: {report_path}" in out
    assert "student (soft+repr)" in out and "baseline (labels-only)" in out

    report = json.loads(report_path.read_text())
    assert set(report["students"]) == {"soft+repr", "labels-only"}
    assert report["teacher"]["params"] > report["student"]["params"] and report["compression"] > 1
    assert 0 <= report["student"]["accuracy"] <= 1 and "baseline" in report
    assert "baseline (TF-IDF + LR)" in out and 0 <= report["tfidf"]["accuracy"] <= 1 and "tfidf" in report["dev"]
    assert (work / "export").is_dir() and any((work / "export").rglob("*.onnx"))
    # two shards ran in the ParallelFor and were merged
    steps = {"prepare-data", "finetune-teacher", "pseudo-label-transfer-set", "merge-pseudo-labels",
             "distill-student", "distill-student-2", "evaluate", "export"}
    assert set(first["executed"]) == steps and first["cached"] == []

    client = mlflow.MlflowClient(first["tracking_uri"], first["tracking_uri"])  # not a registry URI another test set
    assert [m.name for m in client.search_registered_models()] == ["distilflow-tiny"]
    exp = client.get_experiment_by_name("distilflow-tiny")
    runs = client.search_runs([exp.experiment_id], f"tags.`kfp.run_id` = '{first['kfp_run_id']}'")
    parent = next(r for r in runs if r.info.run_id == first["parent_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and "student.accuracy" in parent.data.metrics
    assert parent.data.tags["distilflow.final_state"] == "SUCCEEDED"  # closed by the exit handler
    assert {"prepare-data", "finetune-teacher", "evaluate", "export"} <= {r.info.run_name for r in children}
    assert sum(r.info.run_name == "pseudo-label-transfer-set" for r in children) == 2

    # the first run (verbose) showed kfp.local's whole log, each step's own lines included
    assert "Streamed logs" in out and "executor_input" in out and "distilflow.prepare_data prepared" in out
    # each step's MLflow run holds its own log, whatever the terminal showed
    prep = next(r for r in children if r.info.run_name == "prepare-data")
    log_text = Path(mlflow.artifacts.download_artifacts(run_id=prep.info.run_id, artifact_path="logs/prepare-data.log",
                                                        tracking_uri=first["tracking_uri"])).read_text()
    assert "distilflow.prepare_data prepared" in log_text

    # nothing changed: every task is reused, and the report is the same. Quiet this time: one line
    # per step, the summary table; kfp.local's log only in the run's log file.
    second = pipeline.run_local(load_config(TINY), verbose=False)
    quiet = capsys.readouterr().out
    assert set(second["cached"]) == steps and second["executed"] == []
    assert "Streamed logs" not in quiet and "executor_input" not in quiet and "student (soft+repr)" in quiet
    shown = [line.split(None, 1)[1].split(" cached: outputs reused")[0].strip()
             for line in quiet.splitlines() if "cached: outputs reused" in line]
    shards = ["pseudo-label-transfer-set [1/2]", "pseudo-label-transfer-set [2/2]"]  # one name, two shards
    assert sorted(shown) == sorted(steps - {"pseudo-label-transfer-set"} | set(shards))
    assert len(quiet.splitlines()) <= len(steps) + 12
    full = (work / "kfp" / f"{second['kfp_run_id']}.log").read_text()
    assert "cache hit" in full and "Pipeline 'distilflow-tiny' finished with status SUCCESS" in full
    assert json.loads(report_path.read_text()) == report
    assert len(client.search_model_versions("name='distilflow-tiny'")) == 1  # export was not re-run


@pytest.mark.integration
def test_failed_step_is_one_line_and_fails_the_parent_run(tiny_env, tmp_path, capsys):
    """kfp.local (2.17) runs dsl.ExitHandler tasks after a failed body, with its final status."""
    import mlflow

    bad = tmp_path / "bad.csv"
    bad.write_text("body,label\nhello,a\n")
    code = pipeline.main(["run", "--config", str(TINY), "--set", f"data.source={bad}"])  # quiet: the default
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: pipeline distilflow-tiny failed") and "prepare-data" in err[-1]
    # quiet, the failed step's own error still reaches the terminal (the log's tail), and where the whole log is
    assert "bad.csv: column 'text' missing" in captured.err and "whole: " in err[-1]
    assert "prepare-data" in captured.out and "failure in" in captured.out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distilflow-tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`distilflow.role` = 'parent'")
    assert [r.info.status for r in parents] == ["FAILED"]
    # the exit handler ran after the failure and closed it (run_local's own close is only a fallback)
    assert parents[0].data.tags["distilflow.final_state"] == "FAILED"
