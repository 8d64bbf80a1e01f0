"""Factorised student embeddings (student.embed_rank): a (V, r) lookup times an (r, E) projection,
initialised from the SVD of the teacher's rows; the full (V, E) path and old student dirs unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.lib.core.errors import UserError
from components.lib.core.student import PAD, BiLSTMStudent, StudentArch, VocabMap, svd_embeddings, svd_factors
from components.lib.core.torch_utils import count_parameters
from components.lib.models.student_io import encode, load_student, predict_logits, save_student
from components.lib.settings.config import StudentConfig, load_config
from components.lib.training.distill import new_student

torch.set_num_threads(1)


def teacher_rows(seed: int = 0, s: int = 200, h: int = 32) -> np.ndarray:
    """(S, H) rows with a decaying spectrum (distinct singular values) and an offset to centre away."""
    g = np.random.default_rng(seed)
    return (g.normal(size=(s, h)) * np.geomspace(4.0, 0.1, h) @ np.linalg.qr(g.normal(size=(h, h)))[0] + 3.0).astype(np.float32)


def arch(rank: int | None, task: str = "sequence-classification") -> StudentArch:
    return StudentArch(vocab_size=50, embed_dim=12, hidden=10, layers=2, dropout=0.1, repr_dim=8, num_labels=3, task=task,
                       embed_rank=rank)


def test_full_rank_factors_are_the_svd_init():
    rows = teacher_rows()
    lookup, projection = svd_factors(rows, 12, 12)
    full = svd_embeddings(rows, 12)
    assert torch.equal(lookup, full) and torch.equal(projection, torch.eye(12))
    assert torch.equal(lookup @ projection, full)


@pytest.mark.parametrize("rank", [2, 5, 11])
def test_factors_multiply_to_the_truncated_svd_of_the_full_init(rank):
    """Eckart-Young: lookup @ projection is the best rank-r approximation of svd_embeddings(rows, E)."""
    rows = teacher_rows(seed=rank)
    lookup, projection = (t.double().numpy() for t in svd_factors(rows, 12, rank))
    full = svd_embeddings(rows, 12).double().numpy()  # (S, 12)
    u, s, vt = np.linalg.svd(full, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(lookup @ projection, truncated, atol=1e-5, rtol=0)
    assert np.linalg.norm(full - lookup @ projection) == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-4)
    assert lookup.shape == (200, rank) and projection.shape == (rank, 12)
    assert np.sqrt((lookup**2).mean()) == pytest.approx(1.0, rel=1e-5)  # the lookup on the full init's scale
    with pytest.raises(ValueError, match="embed_rank 13"):
        svd_factors(rows, 12, 13)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_factorised_encoder_parameters_padding_and_init(task):
    torch.manual_seed(0)
    full, fact = BiLSTMStudent(arch(None, task)), BiLSTMStudent(arch(4, task))
    assert list(full.state_dict())[0] == "encoder.embeddings.weight"  # the one-matrix student, as before
    keys = list(fact.state_dict())
    assert keys[:2] == ["encoder.embeddings.lookup.weight", "encoder.embeddings.proj.weight"] and keys[2:] == list(full.state_dict())[1:]
    assert count_parameters(full) - count_parameters(fact) == 50 * 12 - (50 * 4 + 4 * 12)
    assert sum(p.numel() for p in fact.param_groups()["embeddings"]) == 50 * 4 + 4 * 12
    assert fact.encoder.embeddings.lookup.weight[PAD].abs().sum() == 0
    # random init: the product's entries on the full matrix's N(0, 1) scale
    big = BiLSTMStudent(StudentArch(4000, 64, 8, 1, 0.0, 4, 2, embed_rank=16)).encoder.embeddings
    assert big(torch.arange(1, 4000)).std().item() == pytest.approx(1.0, abs=0.1)
    rows = teacher_rows(s=50)
    lookup, projection = svd_factors(rows, 12, 4)
    model = BiLSTMStudent(arch(4, task), (lookup, projection)).eval()
    emb = model.encoder.embeddings
    ids = torch.tensor([[PAD, 1, 2, 49]])
    want = (lookup @ projection)[ids]
    want[0, 0] = 0.0  # the pad row embeds to zero
    torch.testing.assert_close(emb(ids), want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="lookup"):
        BiLSTMStudent(arch(4, task), svd_embeddings(rows, 12))
    with pytest.raises(ValueError, match="shape"):
        BiLSTMStudent(arch(None, task), (lookup, projection))


def test_padding_does_not_change_a_factorised_students_output():
    torch.manual_seed(1)
    model = BiLSTMStudent(arch(4)).eval()
    ids = torch.randint(2, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(ids, mask), model.logits(padded, (padded != PAD).long()), atol=1e-6, rtol=0)


def test_bad_rank_is_a_one_line_error_naming_the_key():
    for value, why in (("200", "must be <= student.embed_dim"), ("1", "greater than or equal to 2")):
        with pytest.raises(UserError, match=f"config key 'student.embed_rank': .*{why}") as err:
            load_config(None, ["student.embed_dim=96", f"student.embed_rank={value}"])
        assert "\n" not in str(err.value)
    assert load_config(None, ["student.embed_rank=96"]).student.embed_rank == 96
    with pytest.raises(ValueError, match="embed_rank 13"):
        arch(13)


@pytest.fixture()
def tok_vocab(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    counts = np.bincount(np.concatenate(tok(TEXTS)["input_ids"]), minlength=len(tok))
    return tok, VocabMap.from_counts(counts, 1, None, tok.all_special_ids, tok.pad_token_id, tok.unk_token_id)


TEXTS = ["the striker scored a goal", "shares fell as the market closed lower", "the coach praised the team",
         "the bank raised its rates", "a late goal won the cup", "profits and shares rose"]
LABELS = torch.tensor([0, 1, 0, 1, 0, 1])


def test_a_student_saved_before_embed_rank_loads(tmp_path, tok_vocab):
    tok, vocab = tok_vocab
    a = StudentArch(len(vocab), 12, 10, 1, 0.1, 8, 2)
    torch.manual_seed(0)
    model = BiLSTMStudent(a).eval()
    save_student(tmp_path / "s", model, a, vocab, tok, ["x", "y"], "soft", 16)
    cfg_path = tmp_path / "s" / "config.json"
    config = json.loads(cfg_path.read_text())
    assert config["arch"].pop("embed_rank") is None
    cfg_path.write_text(json.dumps(config))  # what the code before embed_rank wrote
    loaded = load_student(tmp_path / "s")
    assert loaded.arch.embed_rank is None and loaded.arch == a
    ids, mask = encode((tok, vocab), TEXTS, 16)
    with torch.no_grad():
        np.testing.assert_array_equal(predict_logits(loaded, TEXTS), model.logits(ids, mask).numpy())
    config["arch"]["embed_rank"] = 4  # weights of one (V, E) matrix under a factorised arch: one line
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not match config.json's arch: Missing key.*lookup") as err:
        load_student(tmp_path / "s")
    assert "\n" not in str(err.value)
    config["arch"]["embed_rank"] = 40
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="'arch' is not a student architecture .*embed_rank 40"):
        load_student(tmp_path / "s")


def test_factorised_student_trains_and_round_trips(tmp_path, tok_vocab, tiny_bert_dir):
    """new_student (distill's path): the SVD factors of the teacher's rows; a few Adam steps train
    both factors, the pad row stays zero; save/load gives the same logits and records embed_rank."""
    from transformers import AutoModel

    tok, vocab = tok_vocab
    teacher = AutoModel.from_pretrained(tiny_bert_dir).get_input_embeddings().weight.detach().numpy()  # (V_t, 32)
    s = StudentConfig(embed_dim=12, embed_rank=4, hidden=10, dropout=0.0, device="cpu")
    torch.manual_seed(0)
    model, a, _ = new_student(s, vocab, teacher, repr_dim=8, num_labels=2)
    assert a.embed_rank == 4
    lookup, projection = svd_factors(teacher[vocab.teacher_ids], 12, 4)
    assert torch.equal(model.encoder.embeddings.lookup.weight[1:], lookup[1:])
    assert torch.equal(model.encoder.embeddings.proj.weight, projection.T)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = encode((tok, vocab), TEXTS, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model.logits(ids, mask), LABELS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("encoder.embeddings.lookup.weight", "encoder.embeddings.proj.weight"))
    assert after["encoder.embeddings.lookup.weight"][PAD].abs().sum() == 0
    model.eval()
    save_student(tmp_path / "s", model, a, vocab, tok, ["x", "y"], "soft", 16)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["arch"]["embed_rank"] == 4 and config["parameters"] == count_parameters(model)
    loaded = load_student(tmp_path / "s")
    assert loaded.arch == a
    with torch.no_grad():
        np.testing.assert_array_equal(predict_logits(loaded, TEXTS), model.logits(ids, mask).numpy())
