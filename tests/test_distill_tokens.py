"""distill-student for token classification: masked per-word losses, targets on first pieces,
every mode trains a loadable tagger, the teacher signal alone gives a good one, short max_length
(cut words are O), a real teacher's score_words output, determinism and resume, MLflow."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from components import distill_student
from components.distill_student import tokens as distill_tokens
from components.lib.contracts import data, token_data
from components.lib.core import losses
from components.lib.core.errors import DataError, UserError
from components.lib.core.ner_metrics import entity_scores, tag_names
from components.lib.models.student_io import load_student, predict_tags, word_ids
from components.lib.settings.config import PipelineConfig, StudentMode
from components.lib.training import distill as training
from tests.helpers import NER_TAGS, make_ner_sentences

torch.set_num_threads(1)
TINY = {"embed_dim": 32, "hidden": 32, "max_length": 24, "batch_size": 16, "lr": 0.02, "dropout": 0.1,
        "repr_epochs": 3, "soft_epochs": 4, "label_epochs": 4, "patience": 3, "num_threads": 1, "max_vocab": 2000}
N_LABELED = 24 + 12 + 30  # train + dev + test sentences of write_tiny_ner_task's defaults (the transfer set follows)


def oracle_pseudo(task_dir: Path, out: Path, repr_dim: int = 32, seed: int = 0) -> Path:
    """pseudo.parquet over the task's transfer set from a teacher that knows the gold tags: logits
    +2 on the gold tag, -2 elsewhere, plus noise; per-word states a noisy linear map of the logits."""
    table = token_data.read_token_transfer(task_dir / "transfer.parquet")
    sents = table.column("tokens").to_pylist()
    all_sents, all_tags, _ = make_ner_sentences(N_LABELED + len(sents), seed=0)
    assert all_sents[N_LABELED:] == sents  # the fixture's transfer rows, in order
    g = np.random.default_rng(seed)
    proj = g.normal(size=(len(NER_TAGS), repr_dim))
    logits = [(4.0 * np.eye(len(NER_TAGS))[t] - 2.0 + 0.3 * g.normal(size=(len(t), len(NER_TAGS)))).astype(np.float32)
              for t in all_tags[N_LABELED:]]
    reprs = [lg @ proj + 0.1 * g.normal(size=(len(lg), repr_dim)) for lg in logits]
    pseudo = token_data.token_pseudo_table(table.column("id").to_pylist(), sents, logits, reprs, {"label_names": NER_TAGS})
    out.mkdir(parents=True, exist_ok=True)
    data.write_table(pseudo, out / "pseudo.parquet")
    return out


def make_cfg(tmp: Path, task_dir: Path, pseudo_dir: Path, teacher: Path, mode: str, tracking: bool = False, **student) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "task": "token-classification", "work_dir": str(tmp), "data": {"output_dir": str(task_dir)},
        "transfer": {"output_dir": str(pseudo_dir), "teacher": str(teacher)},
        "student": {**TINY, "mode": mode, "output_dir": str(tmp / "student"), **student},
        "tracking": {"enabled": tracking},
    })


@pytest.fixture(scope="module")
def pseudo_dir(tiny_ner_dir, tmp_path_factory) -> Path:
    return oracle_pseudo(tiny_ner_dir, tmp_path_factory.mktemp("pseudo-tokens"))


def dev_split(task_dir: Path) -> tuple[list[list[str]], list[list[str]]]:
    dev = token_data.read_token_labeled(task_dir / "dev.parquet")
    return dev.table.column("tokens").to_pylist(), tag_names(dev.table.column("tags").to_pylist(), dev.label_names)


# ---------------------------------------------------------------- losses and alignment

def test_masked_token_losses_ignore_pads_and_cut_words():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 3, generator=g, requires_grad=True)  # (B, T, C)
    t = torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)  # 4 real words
    labels = torch.tensor([[0, 2, -100, 7], [1, 99, 2, 5]])  # junk (even out of range) off the mask
    t_junk = t.clone()
    t_junk[~mask] = float("nan")  # pads may hold anything: they must not reach the loss
    rows_s, rows_t, rows_l = s[mask], t[mask], labels[mask]  # (4, C), (4, C), (4,)
    assert losses.token_hard_ce(s, labels, mask).item() == pytest.approx(F.cross_entropy(rows_s, rows_l).item(), rel=1e-6)
    for kind in ("mse", "kl"):
        got = losses.token_soft_loss(kind, s, t_junk, mask, 2.0)
        assert got.item() == pytest.approx(losses.soft_loss(kind, rows_s, rows_t, 2.0).item(), rel=1e-6)
    for kind in ("mse", "cosine"):
        assert losses.token_repr_loss(kind, s, t_junk, mask).item() == pytest.approx(losses.repr_loss(kind, rows_s, rows_t).item(), rel=1e-6)
    # Hand value: uniform logits on the 4 real words -> ln 3 whatever sits at the pads.
    flat = torch.zeros(2, 4, 3)
    flat[~mask] = 50.0
    assert losses.token_hard_ce(flat, labels.clamp(0, 2), mask).item() == pytest.approx(math.log(3), rel=1e-6)
    # MSE is a mean over words x classes: one word off by 1 in every class, three exact -> 3 / 12.
    a, b = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    a[0, 0] = 1.0
    a[1, 3] = 9.0  # a pad
    assert losses.token_soft_loss("mse", a, b, mask, 1.0).item() == pytest.approx(0.25)
    # No gradient reaches pad positions; an empty mask gives 0, not NaN.
    (grad,) = torch.autograd.grad(losses.token_soft_loss("kl", s, t_junk, mask, 2.0), s)
    assert torch.isfinite(grad).all() and grad[~mask].abs().sum() == 0 and grad[mask].abs().sum() > 0
    empty = losses.token_repr_loss("mse", s, t_junk, torch.zeros(2, 4, dtype=torch.bool))
    assert empty.item() == 0.0
    (grad,) = torch.autograd.grad(empty, s)
    assert grad.abs().sum() == 0


def test_targets_sit_on_first_pieces_and_ids_match_word_ids(tmp_path, tiny_bert_dir):
    from components.lib.core.student import VocabMap
    from components.lib.core.tokens import encode_words

    tok = training.teacher_tokenizer(tiny_bert_dir)
    sents = [["initech", "hired", "carol", "jones", "in", "lima", "ref0x123456"], ["bob", "smith", "said", "hi"]]
    tags = [[5, 0, 1, 2, 0, 3, 0], [1, 2, 0, 0]]
    src = tmp_path / "src.txt"
    src.write_text("x")
    for max_length in (32, 8):  # 8 pieces: the first sentence loses its last words
        ids, firsts = distill_tokens.cached_word_ids(tmp_path / f"c{max_length}", tok, max_length, {"s": sents}, [src])["s"]
        again = distill_tokens.cached_word_ids(tmp_path / f"c{max_length}", tok, max_length, {"s": sents}, [src])["s"]
        assert all(np.array_equal(a, b) for a, b in zip(ids + firsts, again[0] + again[1], strict=True))  # from the cache
        vocab = VocabMap.from_counts(np.bincount(np.concatenate(ids), minlength=len(tok)), 1, None,
                                     list(tok.all_special_ids), tok.pad_token_id, tok.unk_token_id)
        ref_ids, ref_firsts = word_ids((tok, vocab), sents, max_length)
        seqs = [vocab.encode(x) for x in ids]
        assert all(np.array_equal(a, b) for a, b in zip(seqs + firsts, ref_ids + ref_firsts, strict=True))
        flat, offsets = np.concatenate(tags), np.cumsum([0] + [len(t) for t in tags])
        rows = distill_tokens.word_rows(seqs, firsts, offsets, labels=flat)
        _, _, words, where = distill_tokens.word_batch(rows, np.arange(2), torch.device("cpu"))
        dense = distill_tokens.scatter_words(rows.labels, where, tuple(words.shape), torch.device("cpu"))
        for i in range(2):
            fp = encode_words(tok, [sents[i]], max_length).first_piece[0]
            covered = fp[fp >= 0]
            assert words[i].nonzero().flatten().tolist() == covered.tolist()  # one target per covered word
            assert dense[i, covered].tolist() == tags[i][: len(covered)]
        if max_length == 8:
            assert len(firsts[0]) < len(sents[0])


# ---------------------------------------------------------------- the step

@pytest.mark.parametrize("mode", [m.value for m in StudentMode])
def test_each_mode_trains_a_loadable_tagger(mode, tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    cfg = make_cfg(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir, mode)
    result = distill_student.run(cfg)  # the classification entry dispatches on cfg.task
    out = cfg.student_dir(mode)
    assert isinstance(result, distill_tokens.TokenDistillResult) and Path(result.student_dir) == out
    assert {"model.safetensors", "config.json", "vocab.json", "metrics.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "token-classification" and metrics["dev_f1"] == result.dev_f1
    hist = metrics["history"]
    assert all(np.isfinite(h["train_loss"]) and "dev_f1" in h for h in hist)
    first = metrics["phases"][0]["name"]
    assert first == {"labels-only": "labels", "hard": "hard.1", "soft": "soft.1", "soft+repr": "repr"}[mode]
    falling = [h["train_loss"] for h in hist if h["phase"] == first]
    assert falling[-1] < falling[0], f"{first} loss did not fall: {falling}"
    loaded = load_student(out)
    assert loaded.arch.per_token and loaded.label_names == NER_TAGS and loaded.mode == mode
    # The saved tagger predicts what training measured on dev.
    sents, gold = dev_split(tiny_ner_dir)
    scores = entity_scores(gold, predict_tags(loaded, sents))
    assert scores["f1"] == pytest.approx(result.dev_f1) and scores["token_accuracy"] == pytest.approx(result.dev_accuracy)
    assert not (out.parent / f".{out.name}.ckpt").exists()
    if mode != "labels-only":  # a good teacher signal: the distilled taggers are (near) perfect here
        assert result.dev_f1 > 0.8, f"{mode}: dev entity F1 {result.dev_f1}"


def test_teacher_signal_alone_gives_a_good_tagger(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    """No label stage: the student learns the tags from the teacher's per-word logits and states."""
    result = distill_student.run(make_cfg(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir, "soft+repr", label_epochs=0))
    metrics = json.loads(Path(result.student_dir, "metrics.json").read_text())
    assert [p["name"] for p in metrics["phases"]] == ["repr", "soft.1", "soft.2", "soft.3"]
    assert result.dev_f1 > 0.8, result.dev_f1
    print(f"soft+repr from the teacher alone: dev entity F1 {result.dev_f1:.3f}")


def test_short_student_max_length_predicts_cut_words_as_o(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    cfg = make_cfg(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir, "hard", max_length=8)
    result = distill_student.run(cfg)
    loaded = load_student(result.student_dir)
    sents, gold = dev_split(tiny_ner_dir)
    _, firsts = word_ids(loaded, sents)
    pred = predict_tags(loaded, sents)
    cut = [i for i, s in enumerate(sents) if len(firsts[i]) < len(s)]
    assert cut, "max_length 8 should cut some dev sentences"
    assert all(tag == "O" for i in cut for tag in pred[i][len(firsts[i]):])
    assert entity_scores(gold, pred)["f1"] == pytest.approx(result.dev_f1)
    covered_gold = [g[: len(f)] + ["O"] * (len(g) - len(f)) for g, f in zip(gold, firsts, strict=True)]
    assert entity_scores(gold, covered_gold)["recall"] < 1.0  # entities past the cut are lost...
    assert result.dev_precision > 0.8  # ...but the covered words are tagged well


def test_pseudo_labels_from_a_real_token_teacher(tmp_path, tiny_ner_dir, tiny_bert_dir):
    """score_words output of a BertForTokenClassification with a short teacher max_length: the pseudo
    rows hold only the words the teacher covered, and the student trains on exactly those."""
    from components.lib.models.teacher import load_teacher, score_words

    torch.manual_seed(0)
    model, tok = load_teacher(tiny_bert_dir, label_names=NER_TAGS, task="token-classification")
    table = token_data.read_token_transfer(tiny_ner_dir / "transfer.parquet")
    sents = table.column("tokens").to_pylist()
    logits, reprs = score_words(model, tok, sents, max_length=10, batch_size=64, layer=-1)
    assert any(len(lg) < len(s) for lg, s in zip(logits, sents, strict=True))
    pseudo = token_data.token_pseudo_table(table.column("id").to_pylist(), [s[: len(lg)] for s, lg in zip(sents, logits, strict=True)],
                                     logits, reprs, {"label_names": NER_TAGS})
    (tmp_path / "pseudo").mkdir()
    data.write_table(pseudo, tmp_path / "pseudo" / "pseudo.parquet")
    result = distill_student.run(make_cfg(tmp_path, tiny_ner_dir, tmp_path / "pseudo", tiny_bert_dir, "soft+repr", label_epochs=2))
    metrics = json.loads(Path(result.student_dir, "metrics.json").read_text())
    loaded = load_student(result.student_dir)
    assert loaded.arch.repr_dim == 32  # the teacher's hidden width
    stage1 = [h for h in metrics["history"] if h["phase"] == "repr"]
    assert stage1 and all(np.isfinite(h["val_repr_loss"]) for h in stage1)
    assert stage1[-1]["train_loss"] < stage1[0]["train_loss"]


class Interrupt(Exception):
    pass


def test_deterministic_and_resumable(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    a = distill_student.run(make_cfg(tmp_path / "a", tiny_ner_dir, pseudo_dir, tiny_bert_dir, "soft+repr"))
    b = distill_student.run(make_cfg(tmp_path / "b", tiny_ner_dir, pseudo_dir, tiny_bert_dir, "soft+repr"))
    wa, wb = (load_file(str(Path(r.student_dir, "model.safetensors"))) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.dev_f1 == b.dev_f1 and a.epochs == b.epochs

    cfg = make_cfg(tmp_path / "c", tiny_ner_dir, pseudo_dir, tiny_bert_dir, "soft+repr")

    def crash(rec):
        if rec["step"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill_student.run(cfg, on_epoch=crash)
    steps = []
    c = distill_student.run(cfg, on_epoch=lambda rec: steps.append(rec["step"]))
    assert steps[0] == 6
    wc = load_file(str(Path(c.student_dir, "model.safetensors")))
    assert all(torch.equal(wa[k], wc[k]) for k in wa) and c.dev_f1 == a.dev_f1
    assert len(list((cfg.student_dir().parent / ".cache").glob("words-*.npz"))) == 1


def test_mlflow_run_logs_entity_scores(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    import mlflow

    from components.lib.tracking import runs as tracking

    cfg = make_cfg(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir, "labels-only", tracking=True, label_epochs=3)
    result = distill_student.run(cfg)
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(result.run_id)
    assert run.info.run_name == "distill-student-labels-only" and run.info.status == "FINISHED"
    assert run.data.params["task"] == "token-classification" and run.data.tags["distilflow.task"] == "token-classification"
    assert len(client.get_metric_history(result.run_id, "labels.dev_f1")) == 3
    assert run.data.metrics["final.dev_f1"] == pytest.approx(result.dev_f1)
    assert {"student/model.safetensors", "student/metrics.json"} <= {a.path for a in client.list_artifacts(result.run_id, "student")}


def test_bad_pseudo_inputs_are_one_line_errors(tmp_path, tiny_ner_dir, pseudo_dir, tiny_bert_dir):
    tbl, _ = token_data.read_token_pseudo(pseudo_dir / "pseudo.parquet")
    no_repr = tmp_path / "no-repr"
    no_repr.mkdir()
    data.write_table(tbl.drop_columns(["teacher_repr"]), no_repr / "pseudo.parquet")
    with pytest.raises(UserError, match="teacher_repr"):
        distill_student.run(make_cfg(tmp_path, tiny_ner_dir, no_repr, tiny_bert_dir, "soft+repr"))
    other = tmp_path / "other"
    other.mkdir()
    names = [n.replace("PER", "PERSON") for n in NER_TAGS]
    logits = token_data.ragged_to_numpy(tbl.column("teacher_logits"))
    rows = [logits[0][logits[1][i] : logits[1][i + 1]] for i in range(len(tbl))]
    data.write_table(token_data.token_pseudo_table(tbl.column("id").to_pylist(), tbl.column("tokens").to_pylist(), rows, None,
                                             {"label_names": names}), other / "pseudo.parquet")
    with pytest.raises(DataError, match="do not match"):
        distill_student.run(make_cfg(tmp_path, tiny_ner_dir, other, tiny_bert_dir, "soft"))


def test_teacher_tokenizer_of_an_mlflow_transformers_layout(tiny_bert_dir, tmp_path):
    """A registered teacher (models:/NAME/N) downloads as model/ (config, weights) beside
    components/tokenizer/: the student's vocabulary must come from that tokenizer, not an empty one."""
    model = tmp_path / "teacher" / "model"
    tok = tmp_path / "teacher" / "components" / "tokenizer"
    model.mkdir(parents=True)
    tok.mkdir(parents=True)
    for f in tiny_bert_dir.iterdir():
        shutil.copy2(f, (model if f.name in ("config.json", "model.safetensors") else tok) / f.name)
    from transformers import AutoTokenizer

    got = training.teacher_tokenizer(model)
    want = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    assert got.get_vocab() == want.get_vocab() and len(got) > 1000
    assert got("alice met bob")["input_ids"] == want("alice met bob")["input_ids"]
