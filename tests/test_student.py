"""The BiLSTM student, its trimmed vocabulary, SVD init and save/load (pure, seconds-fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.lib.core.student import (
    PAD,
    UNK,
    BiLSTMStudent,
    StudentArch,
    VocabMap,
    encoder_groups,
    reverse_within_length,
    svd_embeddings,
)
from components.lib.core.torch_utils import count_parameters
from components.lib.models.student_io import encode, load_student, predict_logits, save_student

torch.set_num_threads(1)


def tiny_arch(layers: int = 1, vocab: int = 50) -> StudentArch:
    return StudentArch(vocab_size=vocab, embed_dim=12, hidden=10, layers=layers, dropout=0.1, repr_dim=8, num_labels=3)


def test_vocab_from_counts_keeps_frequent_and_specials():
    counts = np.array([0, 5, 0, 7, 1, 9, 0, 3])  # teacher vocab of 8; pad=0, unk=6, cls=2
    v = VocabMap.from_counts(counts, min_count=2, max_vocab=None, keep=[2, 0, 6], teacher_pad_id=0, teacher_unk_id=6)
    assert v.teacher_ids.tolist() == [0, 6, 2, 1, 3, 5, 7]  # pad, unk, specials, then kept pieces by id
    assert len(v) == 7
    # capped: the 2 most frequent pieces (5: 9x, 3: 7x) besides pad/unk/specials
    capped = VocabMap.from_counts(counts, min_count=1, max_vocab=5, keep=[2], teacher_pad_id=0, teacher_unk_id=6)
    assert capped.teacher_ids.tolist() == [0, 6, 2, 3, 5]


def test_vocab_encode_round_trip_and_unknown():
    counts = np.array([0, 5, 0, 7, 1, 9, 0, 3])
    v = VocabMap.from_counts(counts, min_count=2, max_vocab=None, keep=[2], teacher_pad_id=0, teacher_unk_id=6)
    teacher = np.array([[2, 5, 3, 4, 0], [2, 7, 1, 0, 0]])
    student = v.encode(teacher)
    assert student.dtype == np.int32 and student.shape == teacher.shape
    assert student[0, 3] == UNK  # piece 4 was seen once < min_count
    assert student[0, 4] == PAD and student[1, 3] == PAD
    kept = teacher[teacher != 4]
    assert (v.decode(v.encode(kept)) == kept).all()
    again = VocabMap.from_dict(v.to_dict())
    assert (again.encode(teacher) == student).all() and again.teacher_ids.tolist() == v.teacher_ids.tolist()


def test_forward_shapes_and_param_groups():
    torch.manual_seed(0)
    for layers in (1, 2):
        model = BiLSTMStudent(tiny_arch(layers)).eval()
        ids = torch.randint(2, 50, (4, 9))
        mask = torch.ones(4, 9, dtype=torch.long)
        logits, projected = model(ids, mask)
        assert logits.shape == (4, 3) and projected.shape == (4, 8)
        assert model.logits(ids, mask).shape == (4, 3)
        groups = model.param_groups()
        assert list(groups) == (["classifier", "encoder", "embeddings"] if layers == 1 else
                                ["classifier", "encoder.2", "encoder.1", "embeddings"])
        assert sum(p.numel() for g in groups.values() for p in g) == count_parameters(model)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_param_groups_hold_every_parameter_once(layers):
    model = BiLSTMStudent(tiny_arch(layers))
    groups = model.param_groups()
    assert tuple(groups)[1:-1] == encoder_groups(layers)
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert sum(p.numel() for g in groups.values() for p in g) == count_parameters(model)
    if layers == 1:  # as before per-layer groups: the optimizer sees the same parameters in the same order
        assert [id(p) for p in groups["encoder"]] == [id(p) for p in [*model.encoder.fwd.parameters(), *model.encoder.bwd.parameters()]]
    for i in range(layers if layers > 1 else 0):  # encoder.<i + 1>: both directions of layer i, nothing else
        assert [id(p) for p in groups[f"encoder.{i + 1}"]] == [id(p) for p in [*model.encoder.fwd[i].parameters(), *model.encoder.bwd[i].parameters()]]


def test_reverse_within_length_keeps_pads_in_place():
    x = torch.arange(10.0).view(2, 5, 1)
    lengths = torch.tensor([3, 5])
    r = reverse_within_length(x, lengths)
    assert r[0, :, 0].tolist() == [2.0, 1.0, 0.0, 3.0, 4.0]
    assert r[1, :, 0].tolist() == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert torch.equal(reverse_within_length(r, lengths), x)


@pytest.mark.parametrize("layers", [1, 2])
def test_padding_does_not_change_the_output(layers):
    torch.manual_seed(1)
    model = BiLSTMStudent(tiny_arch(layers)).eval()
    ids = torch.randint(2, 50, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    ids = ids * mask  # pads are id 0, at the end
    extra = 6  # the same texts in a longer padded batch; pad positions hold junk ids too
    ids_long = torch.cat([ids, torch.randint(2, 50, (3, extra))], dim=1)
    ids_long[:, :7] = torch.where(mask.bool(), ids, torch.randint(2, 50, (3, 7)))
    mask_long = torch.cat([mask, torch.zeros(3, extra, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, ra = model(ids, mask)
        b, rb = model(ids_long, mask_long)
        single = model.logits(ids[1:2, :4], mask[1:2, :4])  # alone, no padding at all
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(ra, rb, atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1:2], single, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_pooled_encoding_equals_pooling_the_states(layers):
    """encoder.max_pool() pools the top layer's backward states in reversed order: the same numbers as
    a masked max-pool over the encoder's states, in eval and (same dropout draws) in training mode."""
    torch.manual_seed(2)
    model = BiLSTMStudent(tiny_arch(layers))
    lengths = torch.tensor([7, 4, 1, 0, 6])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    ids = torch.randint(2, 50, (5, 7)) * mask

    def pooled_states() -> torch.Tensor:
        x = model.encoder(ids, mask).masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        return x.masked_fill((lengths == 0).unsqueeze(-1), 0.0)

    for train in (False, True):
        model.train(train)
        torch.manual_seed(3)
        want = pooled_states()
        torch.manual_seed(3)
        got = model.encoder.max_pool(ids, mask)
        assert torch.equal(got, want) and torch.isfinite(got).all()
        assert torch.equal(got[3], torch.zeros(2 * model.arch.hidden))  # the all-pad row


def test_svd_init_spans_the_top_principal_directions():
    g = np.random.default_rng(0)
    # Rows with a clear low-rank structure plus noise: (S=200, H=32).
    rows = g.normal(size=(200, 4)) @ g.normal(size=(4, 32)) * 3 + g.normal(size=(200, 32)) * 0.1 + 5.0
    k = 4
    emb = svd_embeddings(rows, k).double().numpy()  # (200, 4)
    assert emb.shape == (200, k)
    assert np.sqrt((emb**2).mean()) == pytest.approx(1.0, rel=1e-5)  # unit RMS
    centred = rows - rows.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    # The best rank-k reconstruction from the student embeddings equals the Eckart-Young optimum.
    w, *_ = np.linalg.lstsq(emb, centred, rcond=None)
    resid = np.linalg.norm(centred - emb @ w)
    assert resid == pytest.approx(np.sqrt((s[k:] ** 2).sum()), rel=1e-6)
    # Column space of the embeddings == top-k left singular vectors: principal angles ~0.
    q, _ = np.linalg.qr(emb)
    cosines = np.linalg.svd(q.T @ u[:, :k], compute_uv=False)
    assert cosines.min() > 1 - 1e-8
    # Embedding coordinates are decorrelated PCA scores, largest variance first.
    var = emb.var(0)
    assert (np.diff(var) <= 1e-9).all()
    with pytest.raises(ValueError, match="rank"):
        svd_embeddings(rows, 40)


def test_model_uses_given_embeddings_and_zero_pad_row():
    emb = torch.randn(50, 12)
    model = BiLSTMStudent(tiny_arch(), emb)
    assert torch.equal(model.encoder.embeddings.weight[1:], emb[1:])
    assert model.encoder.embeddings.weight[PAD].abs().sum() == 0


def test_save_load_round_trip_identical_logits(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["the striker scored a goal", "shares fell as the market closed lower today", "a chip"]
    ids = tok(texts)["input_ids"]
    counts = np.bincount(np.concatenate(ids), minlength=len(tok))
    vocab = VocabMap.from_counts(counts, 1, None, tok.all_special_ids, tok.pad_token_id, tok.unk_token_id)
    arch = StudentArch(len(vocab), 12, 10, 2, 0.1, 8, 3)
    torch.manual_seed(0)
    model = BiLSTMStudent(arch).eval()
    save_student(tmp_path / "s", model, arch, vocab, tok, ["a", "b", "c"], "soft", 16, {"path": str(tiny_bert_dir)})
    loaded = load_student(tmp_path / "s")
    assert not loaded.model.training
    assert loaded.label_names == ["a", "b", "c"] and loaded.mode == "soft" and loaded.max_length == 16
    assert loaded.vocab.teacher_ids.tolist() == vocab.teacher_ids.tolist()
    ids_t, mask_t = encode((tok, vocab), texts, 16)
    assert ids_t.shape[1] <= 16 and (mask_t.sum(1) >= 3).all()
    assert (ids_t[mask_t.bool()] != UNK).all()  # every piece was in the counts
    unk_ids, _ = encode(loaded, ["zebra quantum"])
    assert (unk_ids[0, 1:-1] == UNK).all()  # unseen pieces -> unk; [CLS]/[SEP] kept
    with torch.no_grad():
        expected = model.logits(ids_t, mask_t).numpy()
    got = predict_logits(loaded, texts, batch_size=2)  # length-bucketed, returned in input order
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_load_student_errors(tmp_path):
    from components.lib.core.errors import UserError

    with pytest.raises(UserError, match="config.json missing"):
        load_student(tmp_path)


def test_onnx_export_dynamic_axes_matches_torch(tmp_path):
    import warnings

    import onnxruntime as ort

    from components.lib.core.student import LogitsOnly

    torch.manual_seed(0)
    model = BiLSTMStudent(tiny_arch(layers=2)).eval()
    ids = torch.randint(2, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsOnly(model), (ids, mask), str(tmp_path / "s.onnx"), input_names=["input_ids", "attention_mask"],
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        )
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"))
    ids2 = torch.randint(2, 50, (5, 11))
    mask2 = (torch.arange(11)[None] < torch.tensor([11, 3, 7, 1, 5])[:, None]).long()
    ids2 = ids2 * mask2
    (got,) = sess.run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model.logits(ids2, mask2).numpy(), atol=1e-5)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification"])
def test_the_student_is_an_encoder_under_a_head(task):
    """The encoder gives (B, T, 2H) states, the task's head turns them into the outputs; the layers
    are made in the order embeddings, LSTMs, dense, classifier (the seed's draws)."""
    from components.lib.core.student import BiLSTMEncoder, SequenceHead, TokenHead

    torch.manual_seed(0)
    arch = StudentArch(vocab_size=50, embed_dim=12, hidden=10, layers=2, dropout=0.1, repr_dim=8, num_labels=3, task=task)
    model = BiLSTMStudent(arch).eval()
    assert isinstance(model.encoder, BiLSTMEncoder)
    assert isinstance(model.head, TokenHead if task == "token-classification" else SequenceHead)
    lstm = [f"encoder.{d}.{i}.{w}_l0" for d in ("fwd", "bwd") for i in (0, 1) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(model.state_dict()) == ["encoder.embeddings.weight", *lstm, "head.out.dense.weight", "head.out.dense.bias",
                                        "head.out.classifier.weight", "head.out.classifier.bias"]
    assert [n for n, _ in model.named_children()] == ["encoder", "head"]
    ids = torch.randint(2, 50, (3, 6))
    mask = (torch.arange(6)[None] < torch.tensor([6, 3, 1])[:, None]).long()
    with torch.no_grad():
        states = model.encoder(ids, mask)
        assert states.shape == (3, 6, 2 * arch.hidden)
        logits, projected = model(ids, mask)
    assert logits.shape == ((3, 6, 3) if task == "token-classification" else (3, 3))
    assert projected.shape == logits.shape[:-1] + (8,)
    model.train()
    assert model.training and model.encoder.training and model.head.training and model.head.out.dropout.training


@pytest.mark.parametrize("layers", [1, 2])
def test_logits_at_equals_the_full_logits_at_those_pieces(layers):
    """The tagger's inference path (student_io.predict_word_logits) gathers the states at the first
    pieces and runs the head there only: the same numbers as every piece's states and logits picked
    there; a classifier refuses it."""
    torch.manual_seed(0)
    arch = StudentArch(vocab_size=50, embed_dim=12, hidden=10, layers=layers, dropout=0.1, repr_dim=8, num_labels=3,
                       task="token-classification")
    model = BiLSTMStudent(arch).eval()
    ids = torch.randint(2, 50, (3, 7))
    mask = (torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]).long()
    rows, cols = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([1, 3, 6, 0, 3, 0])
    with torch.no_grad():
        full = model.logits(ids, mask)
        at = model.logits_at(ids, mask, rows, cols)
        torch.testing.assert_close(model.encoder.states_at(ids, mask, rows, cols), model.encoder(ids, mask)[rows, cols],
                                   rtol=0, atol=0)
        none = model.logits_at(ids, mask, rows[:0], cols[:0])
    assert at.shape == (6, 3) and none.shape == (0, 3)
    torch.testing.assert_close(at, full[rows, cols], rtol=0, atol=1e-6)
    seq = BiLSTMStudent(StudentArch(vocab_size=50, embed_dim=12, hidden=10, layers=1, dropout=0.1, repr_dim=8, num_labels=3))
    with pytest.raises(ValueError, match="token-classification"):
        seq.logits_at(ids, mask, rows, cols)
