"""The task a pipeline runs: the one spelling of each task name in the code base.

A str-valued enum, so configs, Parquet metadata and MLflow tags hold the plain name
("token-classification"); code compares against the member, never the literal.
"""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    sequence_classification = "sequence-classification"
    token_classification = "token-classification"

    def __str__(self) -> str:  # the plain name in messages, params and tags, on every Python version
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)
