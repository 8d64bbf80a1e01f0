"""The exit handler's body (components/kfp_components.finish_parent_run) as it runs on a cluster:
no CLI process, only the pod's KFP_RUN_ID, a real MLflow store. It closes the parent run the
steps made, with the pipeline's final state; when every step was a cache hit it makes one (so
each KFP run has a closed parent); it never touches another run's parent. The kfp.local side
(the ExitHandler running after a failed step) is in tests/test_kfp_local.py."""

from __future__ import annotations

import mlflow
import pytest

from components.kfp_components import finish_parent_run
from components.lib.settings.config import DEFAULT_CONFIG, config_to_json, load_config
from components.lib.tracking import runs as tracking


@pytest.fixture()
def cluster_pod(tmp_path, monkeypatch):
    """A step pod's environment: KFP_RUN_ID from the downward API, no local parent id."""
    for var in ("DISTILFLOW_PARENT_RUN_ID", "DISTILFLOW_KFP_RUN_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(DEFAULT_CONFIG, [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"work_dir={tmp_path}"])
    return cfg, mlflow.MlflowClient(cfg.tracking.uri)


def parents(client, cfg, kfp_run_id: str):
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id], f"tags.`kfp.run_id` = '{kfp_run_id}'")


@pytest.mark.parametrize("state,status", [("SUCCEEDED", "FINISHED"), ("FAILED", "FAILED"), ("CANCELLED", "KILLED")])
def test_closes_the_parent_the_steps_made(cluster_pod, monkeypatch, state, status):
    cfg, client = cluster_pod
    monkeypatch.setenv("KFP_RUN_ID", "run-a")
    made = tracking.find_or_start_parent_run(cfg, "run-a")  # what the first step did
    other = tracking.find_or_start_parent_run(cfg, "run-b")  # another KFP run, still going
    assert finish_parent_run(config_to_json(cfg), state, "prepare-data failed" if state != "SUCCEEDED" else None) == status
    run = client.get_run(made)
    assert run.info.status == status and run.data.tags["distilflow.final_state"] == state
    assert ("distilflow.error" in run.data.tags) == (state != "SUCCEEDED")
    assert client.get_run(other).info.status == "RUNNING"


def test_all_cached_run_still_gets_a_closed_parent(cluster_pod, monkeypatch):
    cfg, client = cluster_pod
    monkeypatch.setenv("KFP_RUN_ID", "run-cached")
    assert finish_parent_run(config_to_json(cfg), "SUCCEEDED") == "FINISHED"
    (run,) = parents(client, cfg, "run-cached")
    assert run.info.status == "FINISHED" and run.data.tags["distilflow.role"] == "parent"


def test_tracking_off_or_no_run_id_is_a_no_op(cluster_pod, monkeypatch):
    cfg, _ = cluster_pod
    assert finish_parent_run(config_to_json(cfg), "FAILED") is None  # no KFP_RUN_ID: nothing to find
    off = cfg.with_overrides({"tracking.enabled": False})
    monkeypatch.setenv("KFP_RUN_ID", "run-x")
    assert finish_parent_run(config_to_json(off), "FAILED") is None
