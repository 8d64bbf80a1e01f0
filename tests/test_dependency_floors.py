"""pyproject.toml's floors admit only versions that have the calls the code makes, and the installed
packages meet them. Installs nothing: reads pyproject.toml, asks importlib.metadata, and probes each
version-sensitive call on what is installed."""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the images and the Makefile's venv have it

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The lowest release with what the code calls; pyproject's floor must not go below it.
NEEDS = {
    "torch": ("2.4", "torch.onnx.export(..., dynamo=False) in lib/publish/onnx.py"),
    "transformers": ("5.0", "TrainingArguments(warmup_steps=<float ratio>) in lib/training/finetune.py"),
    "mlflow": ("3.11", "log_model(name=...) (3.0); the transformers flavor on transformers 5 (3.11)"),
    "kfp": ("2.17", "kfp.local.init(enable_caching=...) in pipeline.py"),
    "kfp-kubernetes": ("2.15", "kubernetes.use_secret_as_env(..., optional=True) in pipeline.py"),
    "accelerate": ("1.1", "transformers 5's Trainer"),
}


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {(r := Requirement(line)).name.lower(): r for line in lines}


def floor(req: Requirement) -> Version | None:
    """The lowest version the requirement admits, from its >=, ==, ~= or > clauses."""
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
    return max(bounds) if bounds else None


def test_every_dependency_has_a_floor():
    assert [name for name, req in requirements().items() if floor(req) is None] == []


@pytest.mark.parametrize("extra", [None, "dev", "demo", "multilingual"])
def test_installed_packages_meet_the_declared_ranges(extra):
    bad = []
    for name, req in requirements(extra).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            if extra is None:  # the extras are optional; the core must be there
                bad.append(f"{name}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):  # local tags (2.13.0+cpu) compare fine
            bad.append(f"{name} {installed} outside {req.specifier}")
    assert bad == []


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_floor_is_not_below_what_the_code_calls(name):
    need, call = NEEDS[name]
    declared = floor(requirements()[name])
    assert declared is not None and declared >= Version(need), f"{name}>={declared}: {call} needs {need}"


# ---------------------------------------------------------------- the calls themselves, on what is installed

def test_torch_onnx_export_takes_dynamo():
    import torch.onnx

    assert "dynamo" in inspect.signature(torch.onnx.export).parameters


def test_float_warmup_steps_is_a_ratio(tmp_path):
    """What finetune.py relies on: warmup_steps=0.3 over 10 steps warms up for 3 (4.x: lr 0 once, then decay)."""
    import torch
    from transformers import TrainingArguments, get_scheduler

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1.0, warmup_steps=0.3, report_to="none",
                             use_cpu=True)
    assert args.get_warmup_steps(10) == 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    # as Trainer.create_scheduler builds it
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                              num_warmup_steps=args.get_warmup_steps(10), num_training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == max(lrs) == 1.0


def test_mlflow_log_model_takes_name():
    import mlflow.pyfunc
    import mlflow.transformers

    for flavor in (mlflow.pyfunc, mlflow.transformers):
        assert "name" in inspect.signature(flavor.log_model).parameters, flavor.__name__


def test_mlflow_transformers_flavor_covers_the_installed_transformers():
    from mlflow.ml_package_versions import _ML_PACKAGE_VERSIONS

    supported = _ML_PACKAGE_VERSIONS["transformers"]["models"]
    assert Version(supported["maximum"]).major >= Version(version("transformers")).major, supported


def test_kfp_local_init_takes_enable_caching():
    from kfp import local

    assert "enable_caching" in inspect.signature(local.init).parameters


def test_kfp_kubernetes_secret_env_takes_optional():
    from kfp import kubernetes

    assert "optional" in inspect.signature(kubernetes.use_secret_as_env).parameters


def test_accelerate_is_new_enough_for_the_trainer():
    from transformers.utils import is_accelerate_available

    assert is_accelerate_available()  # transformers' own minimum for Trainer
