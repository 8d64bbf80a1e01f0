"""benchmarks/paper_units.py: the test subsample the IMDB table is measured on.

The full preset measures on reviews the quick preset never evaluated on (its settings were chosen
while looking at those): subsample_test(exclude=N) must be disjoint from the N-row subsample,
stratified, and fixed, and carry the unit's train and dev splits for evaluate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tests.helpers import write_tiny_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_units import section, subsample_test  # noqa: E402


def _ids_and_labels(d: Path) -> tuple[set[str], np.ndarray]:
    from components.lib.contracts import data

    t = data.read_labeled(d / "test.parquet").table
    return set(t.column("id").to_pylist()), np.asarray(t.column("label").to_pylist())


def test_full_preset_subsample_is_disjoint_from_the_quick_one(tmp_path):
    src = write_tiny_task(tmp_path / "data", test=20)  # 3 classes x 20 test rows
    (src / "data_card.json").write_text(json.dumps({"rows": {"test": 60}}))
    quick_ids, quick_labels = _ids_and_labels(subsample_test(src, tmp_path / "quick", 12))
    full = subsample_test(src, tmp_path / "full", 30, exclude=12)
    full_ids, full_labels = _ids_and_labels(full)
    assert len(quick_ids) == 12 and len(full_ids) == 30 and not quick_ids & full_ids
    assert np.bincount(quick_labels).tolist() == [4, 4, 4] and np.bincount(full_labels).tolist() == [10, 10, 10]
    assert json.loads((full / "data_card.json").read_text())["test_subsample"]["excluded"] == 12
    # evaluate reads dev (every model's dev score) and train (the TF-IDF baseline) beside the subsample
    for split in ("train", "dev"):
        assert (full / f"{split}.parquet").read_bytes() == (src / f"{split}.parquet").read_bytes()
    # fixed: the same call gives the same rows; without exclude the quick sample is unchanged
    assert _ids_and_labels(subsample_test(src, tmp_path / "again", 30, exclude=12))[0] == full_ids
    assert _ids_and_labels(subsample_test(src, tmp_path / "quick2", 12))[0] == quick_ids


def test_a_setting_added_later_leaves_fingerprints_alone_at_its_default():
    """Units recorded before teacher.group_by_length existed stay done while it is off; on, it keys."""
    from components.lib.settings.config import PipelineConfig

    off = section(PipelineConfig.model_validate({"teacher": {"epochs": 3}}), "teacher")
    on = section(PipelineConfig.model_validate({"teacher": {"epochs": 3, "group_by_length": True}}), "teacher")
    assert "group_by_length" not in off and on == {**off, "group_by_length": True}
    assert "output_dir" not in off and "num_threads" not in off and off["epochs"] == 3
