"""What export does differently per task: the ExportHooks Protocol, which sequence.py and tokens.py
each satisfy as a module (plain functions and constants), and Dev, the dev split as a task reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from components.lib.settings.config import PipelineConfig


@dataclass(frozen=True)
class Dev:
    """The dev split: ONNX parity, the dev score and the int8 keep/drop read it (test is evaluate's alone)."""

    label_names: list[str]
    items: list  # what the student scores: texts, or pre-split sentences (lists of words)
    gold: Any  # their labels: (N,) class ids, or per sentence its tag names
    texts: list[str]  # the raw strings a pyfunc user sends for the items


@runtime_checkable
class ExportHooks(Protocol):
    """The task's part of export; `student` is a loaded student (lib/models/student_io.py), `session`
    an ONNX Runtime session of its graph."""

    METRIC: str  # report.json's headline metric: the summary's key, the gate's dev_<METRIC>, the result's fields
    TASK_KEYS: dict[str, str]  # the summary's first keys, and tags of the registered version
    CODE_MODULES: tuple[str, ...]  # the lib/<layer>/<module>.py files the pyfunc imports, shipped with it
    RESULT: type[BaseModel]  # what run() returns (dev_<METRIC>_fp32, dev_<METRIC>_int8 among its fields)

    def check_student(self, student: Any, student_dir: Path) -> None:
        """Raise UserError when the student is not one this task exports."""

    def read_dev(self, cfg: PipelineConfig, rep: dict) -> Dev:
        """cfg.data_dir/dev.parquet, after checking evaluate's report `rep` is this task's."""

    def check_onnx(self, student: Any, session: Any, dev: Dev, cfg: PipelineConfig) -> tuple[float, float]:
        """(max |Δlogit| against torch, the graph's dev score), logged; raises ParityError."""

    def quantize(self, fp32: Path, out: Path, student: Any, dev: Dev, base: float, cfg: PipelineConfig) -> dict:
        """lib/publish/onnx.py try_int8 on this task's dev score (`base`: the fp32 graph's)."""

    def pyfunc_config(self, cfg: PipelineConfig) -> dict:
        """Keys pyfunc.json holds beyond the student's (the step's run logs them as params too)."""

    def pyfunc_kwargs(self, bundle: Path, code_paths: list[str], example_texts: list[str],
                      label_names: list[str]) -> dict:
        """mlflow.pyfunc save_model/log_model arguments: the model class, signature and example."""

    def check_pyfunc(self, model: Any, session: Any, student: Any, texts: list[str], cfg: PipelineConfig) -> None:
        """Raise ParityError unless the saved pyfunc `model` answers texts as the served graph does."""
