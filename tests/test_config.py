"""Config: strict keys, ranges, --set parsing, ${VAR:-default}, resolved dirs, one-line CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from components.lib.core.errors import UserError
from components.lib.settings import config as C
from components.lib.settings.cli import step_main


def write_yaml(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_validate():
    demo = C.load_config(C.DEFAULT_CONFIG)
    assert demo.data.source == "demo:bbc-news" and demo.teacher.model == C.PACKAGED_TEACHER
    imdb = C.load_config(C.PROJECT_ROOT / "configs" / "imdb.yaml")
    assert imdb.data.label_names == ["neg", "pos"] and imdb.data.source.endswith("imdb/train.parquet")
    assert C.load_config().name == demo.name  # no path: the embedded default


@pytest.mark.parametrize("yaml_text, key", [
    ("data:\n  sourse: x.csv\n", "data.sourse"),
    ("colour: red\n", "colour"),
    ("student:\n  hiden: 3\n", "student.hiden"),
])
def test_unknown_key_is_named(tmp_path, yaml_text, key):
    with pytest.raises(UserError, match=rf"unknown config key '{key}'"):
        C.load_config(write_yaml(tmp_path, yaml_text))


@pytest.mark.parametrize("override, key", [
    ("data.labels_per_class=0", "data.labels_per_class"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("teacher.lr=-1", "teacher.lr"),
    ("data.on_overlap=ignore", "data.on_overlap"),
    ("student.mode=bogus", "student.mode"),
    ("data.row_group_rows=10", "data.row_group_rows"),
])
def test_out_of_range_value_is_named(override, key):
    with pytest.raises(UserError, match=rf"config key '{key}'") as err:
        C.load_config(None, [override])
    assert "\n" not in str(err.value)


def test_cross_field_check():
    with pytest.raises(UserError, match="transfer"):
        C.load_config(None, ["transfer.num_shards=2", "transfer.shard_index=2"])


@pytest.mark.parametrize("item, key, value", [
    ("student.hidden=128", "student.hidden", 128),
    ("teacher.lr=1.0e-4", "teacher.lr", 1e-4),
    ("data.label_names=[neg, pos]", "data.label_names", ["neg", "pos"]),
    ("data.labels_per_class=null", "data.labels_per_class", None),
    ("data.clean_html=false", "data.clean_html", False),
    ("data.source=a=b.csv", "data.source", "a=b.csv"),
    ("data.output_dir=", "data.output_dir", ""),
    ("data.label_map={'0': neg, '1': pos}", "data.label_map", {"0": "neg", "1": "pos"}),
])
def test_parse_set_types(item, key, value):
    assert C.parse_set(item) == (key, value)


def test_set_overrides_apply_and_validate():
    cfg = C.load_config(None, ["data.labels_per_class=null", "student.hidden=64", "data.label_names=[a, b]"])
    assert cfg.data.labels_per_class is None and cfg.student.hidden == 64 and cfg.data.label_names == ["a", "b"]
    # YAML 1.1 reads 3e-4 as a string; the float field still takes it.
    assert C.load_config(None, ["teacher.lr=3e-4"]).teacher.lr == pytest.approx(3e-4)
    with pytest.raises(UserError, match="expected section.key=value"):
        C.parse_set("student.hidden")
    with pytest.raises(UserError, match="'source' is not a section"):
        C.load_config(None, ["data.source.x=1"])


def test_set_reaches_one_language_entry_by_lang_or_index(tmp_path):
    path = write_yaml(tmp_path, "task: token-classification\ndata:\n  format: conll\n  languages:\n"
                                "    - {lang: da, source: a/da.iob2}\n    - {lang: hr, source: a/hr.iob2}\n")
    cfg = C.load_config(path, ["data.languages.hr.augment_copies=10", "data.languages.0.max_unlabeled_rows=2000"])
    plain = C.load_config(path).data.languages[1].max_unlabeled_rows
    assert [(e.lang, e.augment_copies, e.max_unlabeled_rows) for e in cfg.data.languages] == [("da", 0, 2000), ("hr", 10, plain)]
    assert cfg.with_overrides({"data.languages.hr.augment_copies": 3}).data.languages[1].augment_copies == 3
    for item, message in (("data.languages.xx.augment_copies=1", "no entry of data.languages has lang 'xx' (da, hr); or give its index"),
                          ("data.languages.2.augment_copies=1", "data.languages has 2 entries (0-1), not 2")):
        with pytest.raises(UserError) as err:
            C.load_config(path, [item])
        assert str(err.value) == f"--set {item.split('=')[0]}: {message}"
    with pytest.raises(UserError, match="unknown config key 'data.languages.1.nope'"):
        C.load_config(path, ["data.languages.hr.nope=1"])


def test_env_expansion(tmp_path, monkeypatch):
    path = write_yaml(tmp_path, "work_dir: ${DF_TEST_WORK:-/tmp/default-work}\ndata:\n  source: ${DF_TEST_DATA}/x.csv\n")
    monkeypatch.delenv("DF_TEST_WORK", raising=False)
    monkeypatch.setenv("DF_TEST_DATA", "/data")
    cfg = C.load_config(path)
    assert cfg.work_dir == "/tmp/default-work" and cfg.data.source == "/data/x.csv"
    monkeypatch.setenv("DF_TEST_WORK", "/elsewhere")
    assert C.load_config(path).work_dir == "/elsewhere"
    assert C.load_config(path, ["data.source=${DF_TEST_DATA}/y.csv"]).data.source == "/data/y.csv"


@pytest.mark.parametrize("text, message", [
    ("data: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        C.load_config(write_yaml(tmp_path, text))
    with pytest.raises(UserError, match="config file not found"):
        C.load_config(tmp_path / "missing.yaml")


def test_resolved_dirs_and_modes():
    cfg = C.validate_config({"work_dir": "w"})
    assert cfg.data_dir == Path("w/data") and cfg.pseudo_dir == Path("w/pseudo")
    assert cfg.student_dir() == Path("w/student/soft_repr")
    assert cfg.student_dir("labels-only") == Path("w/student/labels-only")
    assert cfg.student_modes == [C.StudentMode.soft_repr, C.StudentMode.labels_only]
    cfg = cfg.with_overrides({"data.output_dir": "/x/d", "ablation": True})
    assert cfg.data_dir == Path("/x/d") and cfg.teacher_dir == Path("w/teacher")
    assert len(cfg.student_modes) == 4
    with pytest.raises(UserError, match="unknown config key 'data.nope'"):
        cfg.with_overrides({"data.nope": 1})


def test_frozen_and_json_round_trip():
    cfg = C.load_config(None, ["data.label_names=[a, b]"])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.data.seed = 3  # type: ignore[misc]
    assert C.config_from_json(C.config_to_json(cfg)) == cfg


def test_every_field_is_documented():
    for model in (C.DataConfig, C.TeacherConfig, C.TransferConfig, C.StudentConfig, C.EvaluateConfig,
                  C.ExportConfig, C.TrackingConfig, C.KubernetesConfig, C.PipelineConfig):
        for name, field in model.model_fields.items():
            if name in C.PipelineConfig.model_fields and model is C.PipelineConfig and isinstance(field.default_factory, type):
                continue  # a section: its own fields carry the descriptions
            assert field.description, f"{model.__name__}.{name} has no description"


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    def never(cfg):  # the config fails before the step runs
        raise AssertionError("step ran")

    assert step_main(never, "test", ["--set", "data.sourse=x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and err.rstrip().endswith("unknown config key 'data.sourse'")
    assert step_main(never, "test", ["--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_runs_step_and_prints_json(capsys):
    assert step_main(lambda cfg: {"seed": cfg.data.seed}, "test", ["--set", "data.seed=7"]) == 0
    assert '"seed": 7' in capsys.readouterr().out
