"""What prepare-data's one flow (components/prepare_data/__init__.py) asks of a task: a module of
plain functions and constants that satisfies PrepareHooks (sequence.py, tokens.py).

A task reads its sources into frames keyed on one column (KEY) with the labels in another
(TARGET), plus `id` and `order` (the row's position in its source); the flow de-duplicates them,
drops test overlap and checks the final split on KEY, and asks the task how to hold out a test
share, cut train, build the transfer set, describe the split on the data card and write the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd
from pydantic import BaseModel

from components.lib.settings.config import DataConfig

SPLITS = ("train", "dev", "test", "transfer")


@dataclass
class Inputs:
    """A task's sources, read, checked and encoded (labels as indices into `names`)."""

    train: pd.DataFrame
    test: pd.DataFrame | None  # None: the source has no test data, a share of train is held out
    unlabeled: pd.DataFrame | None  # data.unlabeled_source's rows (TARGET unset), None without one
    names: list[str]  # label (or tag) names in index order
    origin: str  # which setting the names came from
    where: str  # the labeled train source, as messages name it
    sources: dict[str, Any]  # provenance per role (train, test, unlabeled) for the data card
    removed: dict[str, dict[str, int]]  # rows the task already removed while reading, by reason and role
    facts: dict[str, Any]  # data-card entries known from reading


@runtime_checkable
class PrepareHooks(Protocol):
    KEY: str  # the column rows are de-duplicated, compared with test and checked on
    TARGET: str  # the label column: duplicates that disagree on it are counted as conflicts
    NOUN: str  # what the rows are called in overlap messages
    CONFLICTS: str  # the data-card key of those conflict counts
    COUNT_DUPLICATES: bool  # the split checks also count duplicate keys (checks.duplicate_sentences)
    TASK_FIELDS: dict[str, str]  # entries naming the task in the MLflow params and the data card
    UNIT: str  # what the throughput in the log line counts
    Result: type[BaseModel]  # the step's result: the shared fields and those of `extras`

    def read(self, dc: DataConfig) -> Inputs:
        """Read, check and encode the labeled, test and unlabeled sources."""
        ...

    def hold_out_test(self, train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, test): a seeded data.test_fraction of the de-duplicated train rows as the test set."""
        ...

    def split(self, train: pd.DataFrame, dc: DataConfig, got: Inputs) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(train, dev, rest): the low-resource split of the rows left for training."""
        ...

    def augment(self, labeled: pd.DataFrame, taken: set[str], dc: DataConfig,
                got: Inputs) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        """(rows made from the labeled train split for the transfer set, untagged, or None; their
        data-card entry). `taken`: KEY values already used anywhere, which a made row must avoid."""
        ...

    def transfer(self, rest: pd.DataFrame, unlabeled: pd.DataFrame | None, dc: DataConfig,
                 got: Inputs) -> tuple[pd.DataFrame, int]:
        """(transfer set, rows capped): the rest of train without labels and the unlabeled rows,
        shuffled and capped at data.max_transfer_rows; a DataError when it is empty."""
        ...

    def card_facts(self, frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> dict[str, Any]:
        """The task's data-card entries about the final split (its counts and label budgets)."""
        ...

    def write_tables(self, out: Path, frames: dict[str, pd.DataFrame], names: list[str], dc: DataConfig) -> None:
        """<out>/<split>.parquet for every split of SPLITS, in the task's contracts."""
        ...

    def summary(self, rows: dict[str, int], names: list[str]) -> str:
        """What the log line says was prepared (rows per split, ...)."""
        ...

    def extras(self, card: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
        """(result fields, MLflow metrics) the task adds to the shared ones, from the data card."""
        ...
