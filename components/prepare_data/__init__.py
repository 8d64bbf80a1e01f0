"""prepare-data: read a source, clean, de-duplicate, and make the low-resource
train/dev/test/transfer split.

One flow for every task: read the sources (the task's `read`), remove exact duplicates within
train, test and the unlabeled rows, drop train and unlabeled rows that are also in test (counted,
or an error with data.on_overlap=fail) and unlabeled rows that repeat a train row, hold out a test
share when there is no test data, cut train into train/dev/rest, add the task's augmented copies of
train (untagged; token classification's mention replacement), build the transfer set, re-check
the split, and write <data_dir>/{train,dev,test,transfer}.parquet + data_card.json atomically under
one MLflow step run. What differs by task is a hooks module (components/prepare_data/hooks.py
PrepareHooks) in TASKS: sequence.py (texts with a class label, N per class) and tokens.py
(sentences with a tag per word, N sentences, per language with data.languages).

    python -m components.prepare_data --config configs/demo.yaml [--set section.key=value ...]
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from pydantic import BaseModel

from components.lib.contracts import data
from components.lib.core.task import Task
from components.lib.settings.cli import step_main
from components.lib.settings.config import DataConfig, PipelineConfig
from components.lib.sources.splits import dedupe, drop_overlap, verify
from components.lib.tracking import runs as tracking
from components.prepare_data import sequence, tokens
from components.prepare_data.hooks import SPLITS, PrepareHooks
from components.prepare_data.sequence import PrepareResult
from components.prepare_data.tokens import PrepareTokensResult

__all__ = ["run", "main", "PrepareResult", "PrepareTokensResult", "SPLITS", "TASKS"]

log = logging.getLogger("distilflow.prepare_data")

TASKS: dict[Task, PrepareHooks] = {Task.sequence_classification: sequence, Task.token_classification: tokens}


def build(dc: DataConfig, task: PrepareHooks) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """Read, check, dedupe and split. Returns the four frames, label names and the data card."""
    got = task.read(dc)
    key, target = task.KEY, task.TARGET
    removed = {**got.removed, "duplicates": {}, "overlap_with_test": {}}
    conflicts: dict[str, int] = {}
    train, removed["duplicates"]["train"], conflicts["train"] = dedupe(got.train, key, target)
    if got.test is None:
        train, test = task.hold_out_test(train, dc, got)
        got.sources["test"] = {"held_out_from": "train", "fraction": dc.test_fraction, "seed": dc.seed}
    else:
        test, removed["duplicates"]["test"], conflicts["test"] = dedupe(got.test, key, target)
        # across languages too: no train (or, below, transfer) row equals a test row of any language
        train, removed["overlap_with_test"]["train"] = drop_overlap(train, test, key, "train", task.NOUN, dc)
    unlabeled = got.unlabeled
    if unlabeled is not None:
        unlabeled, removed["duplicates"]["unlabeled"], _ = dedupe(unlabeled, key, None)
        unlabeled, removed["overlap_with_test"]["unlabeled"] = drop_overlap(unlabeled, test, key, "unlabeled", task.NOUN, dc)
        in_train = unlabeled[key].isin(train[key])  # would repeat a train/dev row in transfer
        unlabeled, removed["duplicates"]["unlabeled_in_train"] = unlabeled[~in_train], int(in_train.sum())

    labeled, dev, rest = task.split(train, dc, got)
    taken = set(train[key]) | set(test[key]) | (set(unlabeled[key]) if unlabeled is not None else set())
    made, augmentation = task.augment(labeled, taken, dc, got)  # from train only: never dev or test
    n_made = 0 if made is None else len(made)
    if made is not None:
        rest = pd.concat([rest, made], ignore_index=True)
    transfer, capped = task.transfer(rest, unlabeled, dc, got)
    frames = {"train": labeled, "dev": dev, "test": test.sort_values("order", kind="stable"), "transfer": transfer}
    n_from_aug = int(transfer["id"].isin(made["id"]).sum()) if n_made else 0
    n_from_train = int(transfer["id"].isin(rest["id"]).sum()) - n_from_aug  # unlabeled ids hold unsup/
    card = {
        **task.TASK_FIELDS,
        **got.facts,
        "label_names": got.names,
        "label_origin": got.origin,
        "rows": {k: len(v) for k, v in frames.items()},
        "transfer": {"from_train": n_from_train, "from_unlabeled": len(transfer) - n_from_train - n_from_aug,
                     **({"from_augmentation": n_from_aug} if augmentation else {}), "capped": capped},
        **({"augmentation": augmentation} if augmentation else {}),
        "sources": got.sources,
        "removed": removed,
        task.CONFLICTS: conflicts,
        "checks": verify(frames, key, count_duplicates=task.COUNT_DUPLICATES),
        **task.card_facts(frames, got.names, dc),
        "seed": dc.seed,
        "config": dc.model_dump(mode="json"),
    }
    return frames, got.names, card


def run(cfg: PipelineConfig) -> BaseModel:
    """The step for cfg.task: the hooks module TASKS[cfg.task] inside the one flow."""
    t0 = time.perf_counter()
    dc = cfg.data
    task = TASKS[cfg.task]
    with tracking.step_run(cfg, "prepare-data") as tr:
        tr.log_params({**task.TASK_FIELDS, "data": dc.model_dump(mode="json")})
        frames, names, card = build(dc, task)
        with data.atomic_dir(cfg.data_dir) as tmp:
            task.write_tables(tmp, frames, names, dc)
            card["files"] = {f"{s}.parquet": data.sha256_file(tmp / f"{s}.parquet") for s in SPLITS}
            data.write_json(tmp / "data_card.json", card)
        seconds = time.perf_counter() - t0
        rows = card["rows"]
        dups = sum(card["removed"]["duplicates"].values())
        overlap = sum(card["removed"]["overlap_with_test"].values())
        fields, metrics = task.extras(card, names)
        tr.log_metrics({**{f"rows_{k}": v for k, v in rows.items()}, **metrics, "duplicates_removed": dups,
                        "overlap_removed": overlap, "seconds": seconds})
        tr.log_artifact(cfg.data_dir / "data_card.json", "data")
        log.info("prepared %s: %s; %d duplicates and %d test overlaps removed; %.1fs (%.0f %s/s)",
                 cfg.data_dir, task.summary(rows, names), dups, overlap, seconds,
                 sum(rows.values()) / max(seconds, 1e-9), task.UNIT)
        common: dict[str, Any] = {"data_dir": str(cfg.data_dir), "label_names": names, "rows": rows,
                                  "duplicates_removed": dups, "overlap_removed": overlap,
                                  "seconds": round(seconds, 3), "run_id": tr.run_id}
        return task.Result(**common, **fields)


def main(argv: list[str] | None = None) -> int:
    return step_main(run, "Ingest a labeled source and make the low-resource train/dev/test/transfer split.", argv)
