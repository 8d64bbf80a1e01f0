"""The registry quality gate, against a real `mlflow server` (sqlite backend, served artifacts).

A version is always registered; `champion` moves only when dev retention >= export.min_retention,
neither the labels-only nor the TF-IDF baseline beats the student on dev, and the dev accuracy is not below the
current champion's. A rerun of the same pipeline run finds its version instead of registering
another (and repairs a gate a failure left undone). The champion then loads by alias in a fresh
Python process that has no access to this repository's code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from components.lib.publish.registry import gate
from tests.helpers import LABELS, build_tiny_student, build_tiny_teacher, tiny_cfg, write_tiny_task

NAME = "tiny-registry"


def test_gate_rules():
    assert gate(0.90, 0.98, 0.97, None, None) is None  # first version, good enough
    assert gate(0.90, 0.98, 0.97, 0.90, "1") is None  # equal to the champion is not below it
    assert "dev retention 0.9000 < export.min_retention 0.9700" in gate(0.95, 0.90, 0.97, None, None)
    assert "dev accuracy 0.9100 below champion v3 (0.9200)" in gate(0.91, 0.99, 0.97, 0.92, "3")
    both = gate(0.5, 0.5, 0.97, 0.9, "1")
    assert "retention" in both and "champion" in both
    # the labels-only baseline beating the distilled student withholds the alias; a tie does not
    assert gate(0.90, 0.98, 0.97, None, None, baseline=0.92) == (
        "the labels-only baseline's dev accuracy 0.9200 beats the distilled student's 0.9000")
    assert gate(0.90, 0.98, 0.97, None, None, baseline=0.90) is None
    # so does the TF-IDF + logistic regression baseline, named as such; a tie does not
    assert gate(0.90, 0.98, 0.97, None, None, tfidf=0.95) == (
        "the TF-IDF + logistic regression baseline's dev accuracy 0.9500 beats the distilled student's 0.9000")
    assert gate(0.90, 0.98, 0.97, None, None, tfidf=0.90) is None
    assert gate(0.90, 0.98, 0.97, None, None, baseline=0.92, tfidf=0.95).count("beats the distilled student") == 2


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory, packaged_teacher_dir):
    """Two evaluated work dirs sharing a trained tiny teacher: a good student and a worse one."""
    from components import evaluate

    torch.set_num_threads(1)
    teacher = build_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher", packaged_teacher_dir, steps=40)
    dirs = {}
    for name, steps in (("good", 40), ("worse", 2)):
        root = tmp_path_factory.mktemp(name)
        write_tiny_task(root / "data")
        shutil.copytree(teacher, root / "teacher")
        build_tiny_student(root / "student" / "soft_repr", packaged_teacher_dir, steps=steps)
        # Tracking off here: only export's runs and registrations are under test.
        evaluate.run(tiny_cfg(root, None, student={"baseline": False}, evaluate={"tfidf_baseline": False}))
        dirs[name] = root
    return dirs


def _accuracy(root: Path) -> tuple[float, float]:
    """(dev accuracy, dev retention): what the gate reads."""
    rep = json.loads((root / "eval" / "report.json").read_text())
    return rep["dev"]["student"], rep["dev"]["retention"]


@pytest.mark.integration
def test_champion_moves_only_when_the_gate_holds(work_dirs, mlflow_server, tmp_path):
    import mlflow

    from components import export

    good, worse = work_dirs["good"], work_dirs["worse"]
    (good_acc, good_ret), (worse_acc, _) = _accuracy(good), _accuracy(worse)
    assert worse_acc < good_acc and 0.5 < good_ret < 1.9  # preconditions of the scenario below
    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    runs = iter(range(1, 100))

    def export_run(root: Path, **ec):  # each call: another pipeline run
        n = next(runs)
        return export.run(tiny_cfg(root, mlflow_server, export={"model_name": NAME, "quantize": False,
                                                                 "output_dir": str(tmp_path / f"export-{n}"), **ec},
                                   tracking={"kfp_run_id": f"kfp-run-{n}"}))

    first = export_run(good, min_retention=0.5)
    assert (first.registered_version, first.champion, first.gate_reason) == ("1", True, None)
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert str(mv.version) == "1"
    assert mv.tags["kfp_run_id"] == "kfp-run-1" and mv.tags["mode"] == "soft+repr"
    assert float(mv.tags["dev_accuracy"]) == pytest.approx(good_acc, abs=1e-6)
    assert float(mv.tags["dev_retention"]) == pytest.approx(good_ret, abs=1e-6)
    test_rep = json.loads((good / "eval" / "report.json").read_text())  # test scores ride along, for information
    assert float(mv.tags["accuracy"]) == pytest.approx(test_rep["student"]["accuracy"], abs=1e-6)
    assert mv.tags["teacher"] and len(mv.tags["data_card_sha256"]) in (0, 64)

    # A worse model is registered but does not take the alias; the reason is returned and logged.
    # (min_retention lowered so that only the champion comparison blocks it.)
    second = export_run(worse, min_retention=0.1)
    assert second.registered_version == "2" and not second.champion
    assert second.gate_reason == f"dev accuracy {worse_acc:.4f} below champion v1 ({good_acc:.4f})"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_model_version(NAME, "2").tags["distilflow.gate"].startswith("failed: dev accuracy")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                filter_string="tags.`distilflow.step` = 'export' and tags.`distilflow.gate` LIKE '%below champion%'")
    assert run.data.tags["distilflow.champion"] == "False"

    # Low retention (here: a bar above what the student reaches) blocks the alias too.
    third = export_run(good, min_retention=1.9)
    assert third.registered_version == "3" and not third.champion
    assert third.gate_reason == f"dev retention {good_ret:.4f} < export.min_retention 1.9000"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    # As good as the champion and past the bar: the alias moves.
    fourth = export_run(good, min_retention=0.5)
    assert fourth.registered_version == "4" and fourth.champion
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "4"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 4


@pytest.mark.integration
def test_champion_loads_by_alias_in_a_fresh_process(work_dirs, mlflow_server, tmp_path):
    from components import export

    res = export.run(tiny_cfg(work_dirs["good"], mlflow_server,
                              export={"model_name": NAME + "-serve", "output_dir": str(tmp_path / "export"), "min_retention": 0.5}))
    assert res.champion
    script = textwrap.dedent(f"""
        import json, sys
        assert "components" not in sys.modules
        import mlflow.pyfunc
        import pandas as pd
        model = mlflow.pyfunc.load_model("models:/{NAME}-serve@champion")
        texts = ["goal striker cup league coach", "bank shares profit loan tax", "chip laptop server code"]
        out = model.predict(texts)
        assert model.predict(pd.DataFrame({{"text": texts}}))["label"].tolist() == out["label"].tolist()
        assert model.predict({{"text": texts}})["label"].tolist() == out["label"].tolist()
        print(json.dumps({{"labels": out["label"].tolist(), "cols": list(out.columns),
                           "module": type(model.unwrap_python_model()).__module__,
                           "file": sys.modules[type(model.unwrap_python_model()).__module__].__file__}}))
    """)
    # cwd outside the repo and no PYTHONPATH: the class must come from the model's code_paths.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got["labels"]) == 3 and set(got["labels"]) <= set(LABELS)
    assert got["cols"] == ["label", "score"] + [f"prob_{n}" for n in LABELS]
    assert got["module"] == "components.lib.publish.pyfunc" and str(tmp_path) not in got["file"] and "/code/" in got["file"]


def _versions(client, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


@pytest.mark.integration
def test_a_rerun_of_the_same_run_finds_its_version(work_dirs, mlflow_server, tmp_path):
    import mlflow

    from components import export

    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    name = NAME + "-rerun"
    cfg = tiny_cfg(work_dirs["good"], mlflow_server, export={"model_name": name, "quantize": False, "min_retention": 0.5,
                                                             "output_dir": str(tmp_path / "export")},
                   tracking={"kfp_run_id": "kfp-rerun"})
    first = export.run(cfg)
    assert (first.registered_version, first.champion) == ("1", True)
    onnx_mtime = (tmp_path / "export" / "model.onnx").stat().st_mtime_ns
    again = export.run(cfg)  # e.g. KFP retrying the task: the same run, the same content
    assert (again.registered_version, again.champion, again.gate_reason) == ("1", True, None)
    assert _versions(client, name) == ["1"]
    assert (tmp_path / "export" / "model.onnx").stat().st_mtime_ns == onnx_mtime  # the complete dir was reused
    # another pipeline run with the same content is a registration of its own
    other = export.run(cfg.with_overrides({"tracking.kfp_run_id": "kfp-rerun-2"}))
    assert other.registered_version == "2" and _versions(client, name) == ["1", "2"]


@pytest.mark.integration
def test_a_kill_between_export_and_registration_is_repaired_by_the_rerun(work_dirs, mlflow_server, tmp_path):
    """SIGKILL the export step as soon as its dir is complete (before or while it registers): the dir
    is whole, and the rerun leaves exactly one version, gated; a gate lost to a crash is redone."""
    import signal
    import time

    import mlflow
    import yaml

    from components import export

    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    name = NAME + "-kill"
    out = tmp_path / "export"
    cfg = tiny_cfg(work_dirs["good"], mlflow_server, export={"model_name": name, "quantize": False, "min_retention": 0.5,
                                                             "output_dir": str(out)},
                   tracking={"kfp_run_id": "kfp-kill"})
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "components.export", "--config", str(conf)], env=env,
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "export_summary.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = json.loads((out / "export_summary.json").read_text())
    assert (out / "model.onnx").exists() and (out / "pyfunc" / "MLmodel").exists() and summary["content_digest"]
    assert not list(tmp_path.glob(".export.*"))  # no half-written temp dir beside it
    assert len(_versions(client, name)) <= 1

    res = export.run(cfg)
    assert (res.registered_version, res.champion, res.gate_reason) == ("1", True, None)
    assert _versions(client, name) == ["1"]
    assert json.loads((out / "export_summary.json").read_text())["registered_version"] == "1"

    # A crash after register_model but before the gate: the version exists, without alias or decision.
    client.delete_registered_model_alias(name, "champion")
    client.delete_model_version_tag(name, "1", "distilflow.gate")
    res = export.run(cfg)
    assert (res.registered_version, res.champion) == ("1", True) and _versions(client, name) == ["1"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "1").tags["distilflow.gate"] == "passed"
