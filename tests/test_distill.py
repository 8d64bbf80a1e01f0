"""distill-student end to end on tiny inputs: every mode trains, soft beats hard where the
logits carry the signal, unfreezing order, resume after a crash, MLflow logging."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components import distill_student
from components.distill_student import sequence as distill_sequence
from components.lib.contracts import data
from components.lib.core.student import BiLSTMStudent, StudentArch
from components.lib.models.student_io import load_student, predict_logits
from components.lib.settings.config import PipelineConfig, StudentConfig, StudentMode
from components.lib.training import distill as training
from tests.helpers import FILLER, TOPICS

torch.set_num_threads(1)
TINY = {"embed_dim": 16, "hidden": 16, "max_length": 24, "batch_size": 16, "lr": 0.01, "dropout": 0.1,
        "repr_epochs": 2, "soft_epochs": 3, "label_epochs": 4, "patience": 2, "num_threads": 1, "max_vocab": 2000}

# The sequence-classification loss and dev score train_phases is driven with.
SEQUENCE_TASK = {"loss_fn": distill_sequence.phase_loss, "evaluate_fn": distill_sequence.evaluate_phase, "metric": "dev_accuracy"}


def topic_logits(text: str) -> np.ndarray:
    """A bag-of-words 'teacher': logit k = how many words of topic k the text holds."""
    words = text.split()
    return np.array([sum(w in TOPICS[t] for w in words) for t in TOPICS], dtype=np.float32)


def write_pseudo(task_dir: Path, out: Path, repr_dim: int = 32) -> Path:
    """pseudo.parquet from the task's transfer texts, with constructed logits and representations."""
    table = data.read_transfer(task_dir / "transfer.parquet")
    texts = table.column("text").to_pylist()
    logits = np.stack([topic_logits(t) for t in texts])  # (N, 3)
    g = np.random.default_rng(0)
    reprs = logits @ g.normal(size=(3, repr_dim)) + 0.1 * g.normal(size=(len(texts), repr_dim))  # (N, R)
    pseudo = data.pseudo_table(table.column("id").to_pylist(), texts, logits, reprs, {"label_names": list(TOPICS)})
    out.mkdir(parents=True, exist_ok=True)
    data.write_table(pseudo, out / "pseudo.parquet")
    return out


def make_cfg(tmp: Path, task_dir: Path, pseudo_dir: Path, teacher: Path, mode: str, tracking: bool = False, **student) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "work_dir": str(tmp), "data": {"output_dir": str(task_dir)},
        "transfer": {"output_dir": str(pseudo_dir), "teacher": str(teacher)},
        "student": {**TINY, "mode": mode, "output_dir": str(tmp / "student"), **student},
        "tracking": {"enabled": tracking},
    })


@pytest.fixture(scope="module")
def pseudo_dir(tiny_task_dir, tmp_path_factory) -> Path:
    return write_pseudo(tiny_task_dir, tmp_path_factory.mktemp("pseudo"))


@pytest.mark.parametrize("mode", [m.value for m in StudentMode])
def test_each_mode_trains_and_beats_chance(mode, tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir):
    cfg = make_cfg(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir, mode)
    result = distill_student.run(cfg)
    out = cfg.student_dir(mode)
    assert Path(result.student_dir) == out and result.mode == mode
    assert {"model.safetensors", "config.json", "vocab.json", "metrics.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    hist = metrics["history"]
    assert all(np.isfinite(h["train_loss"]) and h["examples_per_s"] > 0 for h in hist)
    first = metrics["phases"][0]["name"]
    losses = [h["train_loss"] for h in hist if h["phase"] == first]
    assert losses[-1] < losses[0], f"{first} loss did not fall: {losses}"
    assert result.dev_accuracy > 0.5, f"{mode}: dev accuracy {result.dev_accuracy} (chance 1/3)"
    assert metrics["vocab_size"] == result.vocab_size and metrics["parameters"] == result.parameters
    expected_first = {"labels-only": "labels", "hard": "hard.1", "soft": "soft.1", "soft+repr": "repr"}[mode]
    assert first == expected_first
    # The saved student predicts what training measured on dev.
    loaded = load_student(out)
    dev = data.read_labeled(tiny_task_dir / "dev.parquet").table
    pred = predict_logits(loaded, dev.column("text").to_pylist()).argmax(1)
    assert (pred == dev.column("label").to_numpy()).mean() == pytest.approx(result.dev_accuracy)
    assert not (out.parent / f".{out.name}.ckpt").exists()  # finished: no checkpoint left


def test_factorised_student_distils_and_counts_its_parameters(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir):
    """student.embed_rank through the step: SVD factors of the teacher's rows, all three stages, and
    the parameter counts (what evaluate's compression divides by) of the two factors."""
    cfg = make_cfg(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir, "soft+repr", embed_rank=8)
    result = distill_student.run(cfg)
    assert result.dev_accuracy > 0.5
    metrics = json.loads((cfg.student_dir() / "metrics.json").read_text())
    loaded = load_student(result.student_dir)
    v = result.vocab_size
    assert loaded.arch.embed_rank == 8 and metrics["embedding_parameters"] == v * 8 + 8 * 16
    assert metrics["parameters"] == result.parameters == sum(p.numel() for p in loaded.model.parameters())
    full = training.new_student(cfg.student.model_copy(update={"embed_rank": None}), loaded.vocab,
                                training.teacher_embeddings(tiny_bert_dir), 32, 3)[0]
    assert sum(p.numel() for p in full.parameters()) - result.parameters == v * 16 - (v * 8 + 8 * 16)


def hinton_task(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """3 topics, but no hard label ever names 'money'. The labeled train split holds sport and tech
    only; each transfer text mixes 2-4 words of its primary topic (sport or tech) with fewer words
    of the other topics, and the 'teacher' scores each topic by its word count, so its argmax is
    never money. Only the logits say what money words mean. Dev holds all three topics: `hard`
    can reach at most 2/3, `soft` learns the money logit from the transfer set (Hinton et al.'s
    omitted-class experiment)."""
    rng = random.Random(seed)
    names = list(TOPICS)

    def text(counts: dict[str, int], tag: str) -> str:
        words = [w for t, k in counts.items() for w in rng.choices(TOPICS[t], k=k)] + rng.choices(FILLER, k=5)
        rng.shuffle(words)
        return " ".join(words) + f" {tag}"

    def mixed(i: int) -> str:
        primary, other = ("sport", "tech") if i % 2 == 0 else ("tech", "sport")
        k = rng.randint(2, 4)
        return text({primary: k, other: rng.randint(0, k - 1), "money": rng.randint(0, k - 1)}, f"tf{i}")

    task = out / "data"
    task.mkdir(parents=True)
    train = [(text({t: 4}, f"tr{i}"), names.index(t)) for i, t in enumerate(["sport", "tech"] * 6)]
    dev = [(text({t: 4}, f"dv{i}"), names.index(t)) for i, t in enumerate(names * 10)]
    for split, rows in (("train", train), ("dev", dev)):
        tbl = data.labeled_table([f"{split}-{i}" for i in range(len(rows))], [r[0] for r in rows], [r[1] for r in rows], names)
        data.write_table(tbl, task / f"{split}.parquet")
    transfer = [mixed(i) for i in range(400)]
    data.write_table(data.transfer_table([f"t-{i}" for i in range(len(transfer))], transfer), task / "transfer.parquet")
    logits = np.stack([topic_logits(t) for t in transfer])
    assert (logits.argmax(1) != 2).all()
    pseudo = out / "pseudo"
    pseudo.mkdir()
    data.write_table(data.pseudo_table([f"t-{i}" for i in range(len(transfer))], transfer, logits, None, {"label_names": names}), pseudo / "pseudo.parquet")
    return task, pseudo


def test_soft_beats_hard_when_logits_carry_the_signal(tmp_path, tiny_bert_dir):
    task, pseudo = hinton_task(tmp_path)
    acc = {}
    for mode in ("hard", "soft"):
        cfg = make_cfg(tmp_path / mode, task, pseudo, tiny_bert_dir, mode, soft_epochs=6, label_epochs=2, patience=6,
                       hidden=32, embed_dim=32, lr=0.02, dropout=0.0)
        acc[mode] = distill_student.run(cfg).dev_accuracy
    assert acc["hard"] <= 2 / 3 + 1e-9  # never saw a money label
    assert acc["soft"] >= acc["hard"] + 0.15, acc
    print(f"hinton task dev accuracy: {acc}")


def test_unfreezing_order_is_honoured(tmp_path):
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    arch = StudentArch(vocab_size=30, embed_dim=8, hidden=8, layers=1, dropout=0.0, repr_dim=4, num_labels=2)
    model = BiLSTMStudent(arch)
    seqs = [g.integers(2, 30, size=g.integers(3, 9)).astype(np.int32) for _ in range(40)]
    rows = distill_sequence.Rows(seqs, labels=g.integers(0, 2, 40), logits=g.normal(size=(40, 2)).astype(np.float32))
    dev = distill_sequence.Rows(seqs[:10], labels=rows.labels[:10])
    s = PipelineConfig().student.model_copy(update={"batch_size": 8, "lr": 0.05})
    phases = training.plan(StudentMode.soft, s.model_copy(update={"soft_epochs": 1, "label_epochs": 0}))
    assert [p.groups for p in phases] == [("classifier",), ("classifier", "encoder"), ("classifier", "encoder", "embeddings")]

    def snapshot():
        return {k: [p.detach().clone() for p in v] for k, v in model.param_groups().items()}

    def changed(a, b, group):
        return any(not torch.equal(x, y) for x, y in zip(a[group], b[group], strict=True))

    # A phase ends on its best dev epoch (maybe its start), so look at the weights after its first epoch.
    before = snapshot()
    seen = []
    training.train_phases(model, phases[:1], lambda p: rows, dev, None, s, tmp_path / "c1.pt", "x",
                          on_epoch=lambda rec: seen.append(snapshot()), **SEQUENCE_TASK)
    after = seen[0]
    assert changed(before, after, "classifier")
    assert not changed(before, after, "encoder") and not changed(before, after, "embeddings")
    before = snapshot()
    seen.clear()
    training.train_phases(model, [phases[1]], lambda p: rows, dev, None, s, tmp_path / "c2.pt", "y",
                          on_epoch=lambda rec: seen.append(snapshot()), **SEQUENCE_TASK)
    after = seen[0]
    assert changed(before, after, "encoder") and not changed(before, after, "embeddings")


ALL = ("classifier", "encoder", "embeddings")


def test_one_layer_plan_is_unchanged():
    """layers=1, repr_unfreeze=all: the plan the pinned demo numbers were made with, written out."""
    s = StudentConfig(repr_epochs=4, soft_epochs=6, label_epochs=60, patience=3)
    assert (s.layers, s.repr_unfreeze) == (1, "all")  # the defaults
    rows = lambda m: [(p.name, p.target, p.groups, p.max_epochs, p.patience) for p in training.plan(m, s)]  # noqa: E731
    soft_labels = [("soft.1", "soft", ("classifier",), 6, 3), ("soft.2", "soft", ("classifier", "encoder"), 6, 3),
                   ("soft.3", "soft", ALL, 6, 3), ("labels.1", "labels", ("classifier",), 60, 3),
                   ("labels.2", "labels", ("classifier", "encoder"), 60, 3), ("labels.3", "labels", ALL, 60, 3)]
    assert rows(StudentMode.labels_only) == [("labels", "labels", ALL, 60, None)]
    assert rows(StudentMode.hard) == [("hard.1", "hard", ("classifier",), 6, 3), ("hard.2", "hard", ("classifier", "encoder"), 6, 3),
                                      ("hard.3", "hard", ALL, 6, 3)]
    assert rows(StudentMode.soft) == soft_labels
    assert rows(StudentMode.soft_repr) == [("repr", "repr", ALL, 4, 3)] + soft_labels


def test_gradual_repr_unfreezes_stage_one_top_down():
    s = StudentConfig(repr_epochs=4, soft_epochs=6, label_epochs=60, patience=3)
    gradual = s.model_copy(update={"repr_unfreeze": "gradual"})
    phases = training.plan(StudentMode.soft_repr, gradual)
    assert [(p.name, p.target, p.groups, p.max_epochs, p.patience) for p in phases[:3]] == [
        ("repr.1", "repr", ("classifier",), 4, 3), ("repr.2", "repr", ("classifier", "encoder"), 4, 3), ("repr.3", "repr", ALL, 4, 3)]
    assert phases[3:] == training.plan(StudentMode.soft_repr, s)[1:]  # stages 2-3 as before
    for mode in (StudentMode.labels_only, StudentMode.hard, StudentMode.soft):  # no stage 1: nothing changes
        assert training.plan(mode, gradual) == training.plan(mode, s)
    assert training.plan(StudentMode.soft_repr, gradual.model_copy(update={"repr_epochs": 0})) == training.plan(StudentMode.soft, s)
    two = training.plan(StudentMode.soft_repr, gradual.model_copy(update={"layers": 2}))
    assert [(p.name, p.groups) for p in two if p.target == "repr"] == [
        ("repr.1", ("classifier",)), ("repr.2", ("classifier", "encoder.2")),
        ("repr.3", ("classifier", "encoder.2", "encoder.1")), ("repr.4", ("classifier", "encoder.2", "encoder.1", "embeddings"))]


def test_stacked_encoder_plan_unfreezes_one_layer_at_a_time():
    s = StudentConfig(layers=3, soft_epochs=6, label_epochs=0, patience=3)
    assert [p.groups for p in training.plan(StudentMode.hard, s)] == [
        ("classifier",), ("classifier", "encoder.3"), ("classifier", "encoder.3", "encoder.2"),
        ("classifier", "encoder.3", "encoder.2", "encoder.1"), ("classifier", "encoder.3", "encoder.2", "encoder.1", "embeddings")]
    assert training.plan(StudentMode.labels_only, s.model_copy(update={"label_epochs": 5}))[0].groups == (
        "classifier", "encoder.3", "encoder.2", "encoder.1", "embeddings")


def tiny_rows(g: np.random.Generator, n: int = 40, repr_dim: int = 4):
    seqs = [g.integers(2, 30, size=g.integers(3, 9)).astype(np.int32) for _ in range(n)]
    rows = distill_sequence.Rows(seqs, labels=g.integers(0, 2, n), logits=g.normal(size=(n, 2)).astype(np.float32),
                                 reprs=g.normal(size=(n, repr_dim)).astype(np.float32))
    return rows, distill_sequence.Rows(seqs[:10], labels=rows.labels[:10])


def params_after_first_epoch(model, phase, rows, dev, s, ckpt: Path) -> tuple[dict, dict]:
    """Named parameters before a phase and after its first epoch (the phase itself ends on its
    best dev epoch, maybe its start)."""
    snap = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
    before, seen = snap(), []
    training.train_phases(model, [phase], lambda p: rows, dev, None, s, ckpt, phase.name,
                          on_epoch=lambda rec: seen.append(snap()), **SEQUENCE_TASK)
    return before, seen[0]


def changed(before: dict, after: dict, prefix: str) -> bool:
    names = [k for k in before if k.startswith(prefix)]
    assert names, prefix
    return any(not torch.equal(before[k], after[k]) for k in names)


def test_stacked_encoder_trains_the_top_layer_first(tmp_path):
    torch.manual_seed(0)
    rows, dev = tiny_rows(np.random.default_rng(0))
    model = BiLSTMStudent(StudentArch(vocab_size=30, embed_dim=8, hidden=8, layers=2, dropout=0.0, repr_dim=4, num_labels=2))
    s = PipelineConfig().student.model_copy(update={"batch_size": 8, "lr": 0.05, "layers": 2})
    phases = training.plan(StudentMode.soft, s.model_copy(update={"soft_epochs": 1, "label_epochs": 0}))
    assert phases[1].groups == ("classifier", "encoder.2") and phases[2].groups == ("classifier", "encoder.2", "encoder.1")
    top = ("encoder.fwd.1.", "encoder.bwd.1.")  # encoder.2 = layer index 1 of both directions
    bottom = ("encoder.fwd.0.", "encoder.bwd.0.")
    before, after = params_after_first_epoch(model, phases[1], rows, dev, s, tmp_path / "c2.pt")
    assert all(changed(before, after, p) for p in top)
    assert not any(changed(before, after, p) for p in bottom) and not changed(before, after, "encoder.embeddings")
    before, after = params_after_first_epoch(model, phases[2], rows, dev, s, tmp_path / "c3.pt")
    assert all(changed(before, after, p) for p in bottom) and not changed(before, after, "encoder.embeddings")


def test_gradual_repr_first_step_fits_the_projection_only(tmp_path):
    """repr.1 trains the "classifier" group, but the repr loss reads dense's output: dense learns,
    the classifier (no gradient) and the frozen encoder stay put; repr.2 moves the encoder."""
    torch.manual_seed(0)
    rows, dev = tiny_rows(np.random.default_rng(1))
    model = BiLSTMStudent(StudentArch(vocab_size=30, embed_dim=8, hidden=8, layers=1, dropout=0.0, repr_dim=4, num_labels=2))
    s = PipelineConfig().student.model_copy(update={"batch_size": 8, "lr": 0.05, "weight_decay": 0.1, "repr_epochs": 1,
                                                     "repr_unfreeze": "gradual"})
    phases = [p for p in training.plan(StudentMode.soft_repr, s) if p.target == "repr"]
    assert [p.name for p in phases] == ["repr.1", "repr.2", "repr.3"]
    before, after = params_after_first_epoch(model, phases[0], rows, dev, s, tmp_path / "r1.pt")
    assert changed(before, after, "head.out.dense.")
    assert not changed(before, after, "head.out.classifier.") and not changed(before, after, "encoder.fwd.") and not changed(before, after, "encoder.embeddings")
    before, after = params_after_first_epoch(model, phases[1], rows, dev, s, tmp_path / "r2.pt")
    assert changed(before, after, "encoder.fwd.") and changed(before, after, "encoder.bwd.")
    assert not changed(before, after, "head.out.classifier.") and not changed(before, after, "encoder.embeddings")


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_student(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir):
    full_cfg = make_cfg(tmp_path / "full", tiny_task_dir, pseudo_dir, tiny_bert_dir, "soft")
    distill_student.run(full_cfg)

    cfg = make_cfg(tmp_path / "crash", tiny_task_dir, pseudo_dir, tiny_bert_dir, "soft")
    epochs = []

    def crash_after_four(rec):
        epochs.append(rec["step"])
        if rec["step"] == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill_student.run(cfg, on_epoch=crash_after_four)
    out = cfg.student_dir()
    assert not out.exists() and (out.parent / f".{out.name}.ckpt" / "checkpoint.pt").exists()
    steps = []
    result = distill_student.run(cfg, on_epoch=lambda rec: steps.append(rec["step"]))
    assert steps and steps[0] == 5  # continued after the fourth epoch, did not start over
    a = load_file(str(full_cfg.student_dir() / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full = json.loads((full_cfg.student_dir() / "metrics.json").read_text())
    assert result.dev_accuracy == full["dev_accuracy"] and result.epochs == full["epochs"]
    # Token ids were cached once per student root and reused by the resumed run.
    assert len(list((out.parent / ".cache").glob("tokens-*.npz"))) == 1


def test_mlflow_run_logs_params_metrics_and_the_student(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir):
    import mlflow

    from components.lib.tracking import runs as tracking

    cfg = make_cfg(tmp_path, tiny_task_dir, pseudo_dir, tiny_bert_dir, "labels-only", tracking=True, label_epochs=3)
    result = distill_student.run(cfg)
    assert result.run_id
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(result.run_id)
    assert run.info.run_name == "distill-student-labels-only" and run.info.status == "FINISHED"
    assert run.data.params["student.hidden"] == "16" and int(run.data.params["vocab_size"]) == result.vocab_size
    assert len(client.get_metric_history(result.run_id, "labels.train_loss")) == 3
    assert run.data.metrics["final.dev_accuracy"] == pytest.approx(result.dev_accuracy)
    arts = {a.path for a in client.list_artifacts(result.run_id, "student")}
    assert {"student/model.safetensors", "student/metrics.json", "student/vocab.json"} <= arts


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_task_dir, tiny_bert_dir):
    from components.lib.core.errors import UserError

    cfg = make_cfg(tmp_path, tiny_task_dir, tmp_path / "nowhere", tiny_bert_dir, "soft")
    with pytest.raises(UserError, match="pseudo.parquet: file not found"):
        distill_student.run(cfg)
    no_repr = write_pseudo(tiny_task_dir, tmp_path / "p")
    tbl = data.read_pseudo(no_repr / "pseudo.parquet")[0].drop_columns(["teacher_repr"])
    data.write_table(tbl, no_repr / "pseudo.parquet")
    cfg = make_cfg(tmp_path, tiny_task_dir, no_repr, tiny_bert_dir, "soft+repr")
    with pytest.raises(UserError, match="teacher_repr"):
        distill_student.run(cfg)
    cfg = make_cfg(tmp_path, tiny_task_dir, no_repr, tmp_path / "no-teacher", "labels-only")
    with pytest.raises(UserError, match="no-teacher"):
        distill_student.run(cfg)


def test_cli_runs_with_overrides_and_reports_errors_in_one_line(tmp_path, tiny_task_dir, tiny_bert_dir, capsys):
    common = [f"work_dir={tmp_path}", f"data.output_dir={tiny_task_dir}", f"transfer.teacher={tiny_bert_dir}",
              "tracking.enabled=false", "student.embed_dim=16", "student.hidden=16", "student.max_length=24",
              "student.label_epochs=2", "student.num_threads=1"]
    args = [x for kv in common for x in ("--set", kv)]
    assert distill_student.main(args + ["--set", "student.mode=labels-only"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "labels-only" and Path(out["student_dir"], "model.safetensors").exists()
    assert distill_student.main(args + ["--set", "student.mode=soft", "--set", f"transfer.output_dir={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pseudo.parquet: file not found" in err and "\n" not in err


@pytest.mark.integration
def test_soft_repr_with_the_packaged_minilm_teacher(tmp_path, tiny_task_dir, packaged_teacher_dir):
    """The real teacher dir: its tokenizer, its 30522x384 embedding matrix (SVD init), 384-wide reprs."""
    pseudo = write_pseudo(tiny_task_dir, tmp_path / "pseudo", repr_dim=384)
    cfg = make_cfg(tmp_path, tiny_task_dir, pseudo, packaged_teacher_dir, "soft+repr", embed_dim=32)
    result = distill_student.run(cfg)
    loaded = load_student(result.student_dir)
    assert loaded.arch.repr_dim == 384 and loaded.config["teacher"]["hidden_size"] == 384
    assert loaded.config["teacher"]["vocab_size"] == 30522
    assert result.dev_accuracy > 0.5
