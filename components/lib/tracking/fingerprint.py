"""Cache salts for local runs: what a step depends on that kfp.local's cache key cannot see.

kfp.local keys a task on its component (image, command, embedded function source), its
parameters (the whole config JSON), its input artifacts (by URI: a cached upstream keeps its
URI, a re-run one gets a new one) and its container env. Missing from that: the code of this
package the bodies import, and the files a step reads from outside the pipeline (the data
source, the teacher checkpoint). `pipeline.py` puts a per-step salt of those into each task's
env, so editing the code, the data file or the checkpoint invalidates exactly what it should.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from components.lib.settings.config import (
    PACKAGED_MPNET,
    PACKAGED_MULTILINGUAL,
    PACKAGED_TEACHER,
    PROJECT_ROOT,
    PipelineConfig,
)
from components.lib.sources.remote import is_remote, stat_digest

_CODE_GLOBS = ("components/**/*.py", "pipeline.py")


def _hash_tree(h: hashlib._Hash, root: Path) -> None:
    """Content hash of a file, or of every file under a dir (sorted relative names + bytes)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(root) if path != root else path.name).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")


def code_digest(root: Path = PROJECT_ROOT) -> str:
    h = hashlib.sha256()
    for pattern in _CODE_GLOBS:
        for path in sorted(root.glob(pattern)):
            if "__pycache__" not in path.parts:
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def ref_digest(ref: str | None, cfg: PipelineConfig) -> str:
    """Digest of what `ref` (a data source or model reference) points at right now."""
    if not ref:
        return "none"
    h = hashlib.sha256(ref.encode() + b"\0")
    if ref == "demo:bbc-news":
        from components.lib.sources.assets import bbc_news_dir

        _hash_tree(h, bbc_news_dir())
    elif ref == PACKAGED_TEACHER:
        from components.lib.sources.assets import packaged_teacher_dir

        _hash_tree(h, packaged_teacher_dir())
    elif ref == PACKAGED_MULTILINGUAL:
        from components.lib.sources.multilingual import packaged_sources

        for path in packaged_sources():  # the inputs, not the cached conversion (made lazily, per user)
            _hash_tree(h, path)
    elif ref == PACKAGED_MPNET:
        from components.lib.sources.mpnet import installed_parts

        # the RECORD digests the assembly checks every part against (not 400 MB re-read per salt)
        for part in installed_parts():
            h.update(f"{part.package}=={part.version} {part.sha256}\0".encode())
    elif ref.startswith("models:/"):
        h.update(_registry_version(ref, cfg).encode())
    elif ref.startswith(("runs:/", "mlflow-artifacts:/")):
        pass  # immutable: a run's artifacts do not change under the same URI
    elif is_remote(ref):
        h.update(stat_digest(ref).encode())  # size + mtime / ETag of the object now
    elif Path(ref).expanduser().exists():
        _hash_tree(h, Path(ref).expanduser())
    # else a hub name: offline here, so its local snapshot is fixed; the name is the key
    return h.hexdigest()


def _registry_version(ref: str, cfg: PipelineConfig) -> str:
    """models:/name@alias and models:/name/latest move; key on the version they resolve to now."""
    import mlflow

    from components.lib.tracking.runs import tracking_uri

    name_part = ref[len("models:/"):]
    try:
        client = mlflow.MlflowClient(tracking_uri(cfg))
        if "@" in name_part:
            name, alias = name_part.split("@", 1)
            return client.get_model_version_by_alias(name, alias).version
        name, _, version = name_part.partition("/")
        if version.isdigit():
            return version
        return max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except Exception:  # unresolvable now: never reuse a cached result for it
        return uuid.uuid4().hex


def cache_salts(cfg: PipelineConfig) -> dict[str, str]:
    """Step name -> salt for DISTILFLOW_CACHE_SALT."""
    code = code_digest()
    langs = [r for ls in cfg.data.languages or [] for r in (ls.source, ls.test_source)]
    refs = (cfg.data.source, cfg.data.test_source, cfg.data.unlabeled_source, *langs)
    data = "|".join(ref_digest(r, cfg) for r in refs)
    salts = {
        "prepare-data": data,
        "finetune-teacher": ref_digest(cfg.teacher.model, cfg),
        "pseudo-label-transfer-set": ref_digest(cfg.transfer.teacher, cfg),
    }
    steps = ("prepare-data", "finetune-teacher", "pseudo-label-transfer-set", "merge-pseudo-labels",
             "distill-student", "evaluate", "export")
    return {step: hashlib.sha256(f"{code}|{salts.get(step, '')}".encode()).hexdigest()[:32] for step in steps}


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distilflow")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def code_version(image: str) -> str:
    """The `code_version` parameter every compiled step gets: KFP's cache key covers a task's
    parameters, image and command but not the code inside the image, so a rebuilt image under the
    same tag would reuse stale results without it. The digest covers components/ and pipeline.py."""
    return f"distilflow {project_version()} code {code_digest()[:16]} image {image}"
