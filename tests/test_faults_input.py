"""Input and configuration faults a user can cause (issue 26), provoked for real through the CLI
`python -m components.prepare_data --config F [--set ...]`: each is one `error:` line naming the
file (and line, column, key or column) and what to do, exit 2, no traceback, and nothing written
to the work or output dir. A few in-process checks cover the neighbours of each case."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.lib.core.errors import DataError, UserError
from components.lib.settings.config import PROJECT_ROOT, load_config, validate_config
from components.lib.sources.ingest import RawSource, open_source
from components.prepare_data import sequence
from tests.helpers import make_topic_texts

UNSET = "DISTILFLOW_TEST_UNSET_I26"  # a variable no test or machine sets


def write_config(tmp_path: Path, **sections) -> Path:
    """A small classification config (tracking off) whose outputs would land in tmp_path/work, /out."""
    raw = {"work_dir": str(tmp_path / "work"), "tracking": {"enabled": False},
           "data": {"labels_per_class": 2, "dev_per_class": 1, "output_dir": str(tmp_path / "out")}}
    for name, keys in sections.items():
        raw[name] = {**raw.get(name, {}), **keys} if isinstance(keys, dict) else keys
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_error(tmp_path: Path, config: Path, *sets: str, env: dict[str, str] | None = None) -> str:
    """Run the step; assert exit 2, one error line, no traceback, nothing written. Returns the line."""
    environ = {k: v for k, v in os.environ.items() if k != UNSET}
    environ.update(env or {})
    environ["PYTHONPATH"] = str(PROJECT_ROOT)
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "components.prepare_data", "--config", str(config), *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    return lines[0]


def topic_rows(n_per_class: int = 10) -> tuple[list[str], list[int]]:
    texts, labels, _ = make_topic_texts(n_per_class, seed=1)
    return texts, labels


# ---------------------------------------------------------------- 1. a CSV with a header and no rows

def test_csv_with_only_a_header(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\n")
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src)}))
    assert line == f"error: {src}: no rows (only a header: text, label); add rows or point the config at another file"


def test_other_files_without_rows(tmp_path):
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "e.jsonl").write_text("\n")
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype="int64")}).to_parquet(tmp_path / "e.parquet")
    for name, message in [("e.csv", "no rows (an empty file)"), ("e.jsonl", "no rows (an empty file)"),
                          ("e.parquet", "no rows (only the columns: text, label)")]:
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: {message}; add rows")):
            open_source(str(tmp_path / name))


# ---------------------------------------------------------------- 2./3. labels mixing numbers and names

def test_jsonl_labels_mixing_ints_and_strings(tmp_path):
    texts, labels = topic_rows()
    src = tmp_path / "d.jsonl"
    names = ["sport", "tech", "money"]
    rows = [{"text": t, "label": y if i % 2 else names[y]} for i, (t, y) in enumerate(zip(texts, labels, strict=True))]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src)}))
    assert line == (f"error: {src}: column 'label' mixes numbers (0, 1, 2) and names ('money', 'sport', 'tech'); "
                    "use one kind, or map every value with data.label_map")


def test_csv_label_column_mixing_indices_and_names(tmp_path):
    texts, labels = topic_rows()
    names = ["sport", "tech", "money"]
    src = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "y": [y if i % 2 else names[y] for i, y in enumerate(labels)]}).to_csv(src, index=False)
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src), "label_column": "y"}))
    assert line == (f"error: {src}: column 'y' mixes numbers (0, 1, 2) and names ('money', 'sport', 'tech'); "
                    "use one kind, or map every value with data.label_map")


def test_label_map_may_map_a_mix_and_one_kind_is_fine(tmp_path):
    texts, labels = topic_rows()
    names = ["sport", "tech", "money"]
    mixed = pd.Series([y if i % 2 else names[y] for i, y in enumerate(labels)]).astype(str)
    dc = validate_config({"data": {"label_map": {"0": "sport", "1": "tech", "2": "money", **{n: n for n in names}}}}).data
    space = sequence.label_space(dc, RawSource("d.csv", "csv", {"": pd.DataFrame({"label": mixed})}), mixed)
    assert space.names == names and list(space.encode(mixed, "d.csv", "label")) == labels
    for one_kind in (pd.Series(["1", "0", "2"]), pd.Series(["1.5star", "2star", "a"])):
        sequence.check_label_kinds(one_kind, "d.csv", "label")
    with pytest.raises(DataError, match=r"test\.jsonl: column 'label' mixes numbers \(3\) and names \('tech'\)"):
        sequence.check_label_kinds(pd.Series(["tech", 3], dtype=object), "test.jsonl", "label")


# ---------------------------------------------------------------- 4. one class

def test_source_with_one_class(tmp_path):
    texts, _ = topic_rows()
    src = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": "sport"}).to_csv(src, index=False)
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src)}))
    assert line == (f"error: {src}: column 'label' holds one class ('sport'); a classifier needs at least two "
                    "(check data.label_column and data.source)")


def test_one_configured_class(tmp_path):
    texts, _ = topic_rows()
    src = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": 0}).to_csv(src, index=False)
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src), "label_names": ["sport"]}))
    assert line == "error: config key 'data.label_names': one class ('sport'); a classifier needs at least two"


# ---------------------------------------------------------------- 5. ${VAR} not set

@pytest.mark.parametrize("key", ["data.source", "teacher.model", "work_dir"])
def test_unset_variable_without_default(tmp_path, key):
    section, _, name = key.rpartition(".")
    config = write_config(tmp_path, **({section: {name: f"${{{UNSET}}}"}} if section else {name: f"${{{UNSET}}}"}))
    line = cli_error(tmp_path, config)
    assert line == (f"error: {config}: config key '{key}': ${{{UNSET}}} is not set and has no default; "
                    f"set {UNSET}, or write ${{{UNSET}:-default}}")


def test_empty_variable_without_default_and_in_a_set_item(tmp_path):
    config = write_config(tmp_path)
    line = cli_error(tmp_path, config, f"data.source=${{{UNSET}}}/d.csv", env={UNSET: ""})
    assert line == (f"error: --set: config key 'data.source': ${{{UNSET}}} is set but empty and has no default; "
                    f"set {UNSET}, or write ${{{UNSET}:-default}}")


def test_defaults_and_list_keys(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET, raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(f"work_dir: ${{{UNSET}:-runs/x}}\ntracking:\n  uri: ${{{UNSET}:-}}\n")
    cfg = load_config(path)
    assert cfg.work_dir == "runs/x" and cfg.tracking.uri == ""  # ${VAR:-} says empty is meant
    monkeypatch.setenv(UNSET, "")
    assert load_config(path).work_dir == "runs/x"  # :- takes the default for empty too, as the shell does
    path.write_text(f"task: token-classification\ndata:\n  languages:\n    - {{lang: da, source: a.iob2}}\n"
                    f"    - {{lang: pt, source: '${{{UNSET}}}/pt.iob2'}}\n")
    with pytest.raises(UserError, match=rf"config key 'data\.languages\.1\.source': \$\{{{UNSET}\}} is set but empty"):
        load_config(path)


# ---------------------------------------------------------------- 6. a malformed JSONL line

def test_malformed_jsonl_line_is_numbered(tmp_path):
    texts, labels = topic_rows(40)
    lines = [json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels, strict=True)]
    lines[90] = '{"text": "unclosed, "label": 1}'
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(lines) + "\n")
    line = cli_error(tmp_path, write_config(tmp_path, data={"source": str(src)}))
    assert line == f"error: {src}:91: not valid JSON (Expecting ',' delimiter at column 22); fix or remove the line"


def test_json_faults_in_process(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": 0}\n\n[1, 2]\n')
    (tmp_path / "d.json").write_text('[\n  {"text": "a", "label": 0},\n  {"text": "b" "label": 1}\n]\n')
    with pytest.raises(DataError, match=r"a\.jsonl:3: expected one JSON object per line, found a list"):
        open_source(str(tmp_path / "a.jsonl"))
    with pytest.raises(DataError, match=r"d\.json:3:16: not valid JSON \(Expecting ',' delimiter\)"):
        open_source(str(tmp_path / "d.json"))


# ---------------------------------------------------------------- 7. YAML syntax

def test_yaml_syntax_error_has_line_and_column(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"work_dir: {tmp_path / 'work'}\ndata:\n  source: [a.csv, b.csv\n  labels_per_class: 3\n")
    line = cli_error(tmp_path, config)
    assert line == (f"error: {config}:4:19: not valid YAML: expected ',' or ']', but got ':' "
                    "(while parsing a flow sequence at 3:11); fix the file there")


def test_yaml_tab_and_unreadable_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n\tsource: x.csv\n")
    with pytest.raises(UserError, match=r"c\.yaml:2:1: not valid YAML: found character '\\t' that cannot start any token"):
        load_config(config)
    with pytest.raises(UserError, match=rf"{tmp_path}: cannot read the config file"):
        load_config(tmp_path)


# ---------------------------------------------------------------- 8. language codes differing in case

def test_languages_differing_only_in_case(tmp_path):
    config = write_config(tmp_path, task="token-classification",
                          data={"languages": [{"lang": "en", "source": str(tmp_path / "en.iob2")},
                                              {"lang": "da", "source": str(tmp_path / "da.iob2")},
                                              {"lang": "EN", "source": str(tmp_path / "EN.iob2")}]})
    line = cli_error(tmp_path, config)
    assert line == (f"error: {config}: config key 'data.languages': expected distinct language codes "
                    "(case-insensitive): entry 0 ('en') and entry 2 ('EN') are the same language; keep one")
