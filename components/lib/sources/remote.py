"""Inputs a pipeline pod can reach: object storage and web URIs, read through pyarrow.fs / fsspec.

    s3://bucket/key        pyarrow.fs.S3FileSystem (AWS_* environment; AWS_ENDPOINT_URL for MinIO/Ceph)
    gs://bucket/key        pyarrow.fs.GcsFileSystem (GOOGLE_APPLICATION_CREDENTIALS, workload identity)
    hf://datasets/org/x/f  fsspec + huggingface_hub's HfFileSystem (HF_TOKEN)
    http(s)://host/f       fsspec's HTTP filesystem

A remote file is copied once to a local temporary file and read there by the same readers as
a local path, so formats, digests and messages (which name the URI, never the temp file) agree.
`local_inputs` lists the config's inputs that only this machine can read: `distilflow submit`
refuses them before it contacts the cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from components.lib.core.errors import DataError

ARROW_SCHEMES = ("s3", "gs", "gcs")
FSSPEC_SCHEMES = ("hf", "http", "https")
REMOTE_PREFIXES = tuple(f"{s}://" for s in ARROW_SCHEMES + FSSPEC_SCHEMES)
# References that name no file on this machine: demos, packaged models, MLflow and Hub URIs.
NOT_PATHS = ("demo:", "packaged:", "models:/", "runs:/", "mlflow-artifacts:/")


def is_remote(spec: str | None) -> bool:
    return bool(spec) and str(spec).lower().startswith(REMOTE_PREFIXES)


def suffix(spec: str) -> str:
    """The file suffix of a path or URI (query and fragment ignored), lower-cased."""
    path = urlparse(spec).path if is_remote(spec) else spec
    return PurePosixPath(path).suffix.lower()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _arrow_fs(uri: str):
    import pyarrow.fs as pafs

    parsed = urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise DataError(f"{uri}: expected {parsed.scheme}://bucket/key")
    try:
        fs, path = pafs.FileSystem.from_uri(uri.replace("gcs://", "gs://", 1))
    except (OSError, ValueError) as err:
        raise DataError(f"{uri}: cannot open the bucket ({_first_line(err)})") from None
    return fs, path, parsed.netloc


def _check_arrow(uri: str):
    """(filesystem, path) of an existing object; one line naming the URI when it is not there."""
    import pyarrow.fs as pafs

    fs, path, bucket = _arrow_fs(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise DataError(f"{uri}: bucket '{bucket}' not found")
            raise DataError(f"{uri}: object not found")
    except OSError as err:  # access denied, unreachable endpoint, bad credentials
        raise DataError(f"{uri}: cannot read ({_first_line(err)})") from None
    if info.type == pafs.FileType.Directory:
        raise DataError(f"{uri}: expected a file, found a prefix (directory)")
    return fs, path, info


def _fsspec_open(uri: str):
    import fsspec

    try:
        return fsspec.open(uri, "rb").open()
    except FileNotFoundError:
        raise DataError(f"{uri}: not found") from None
    except Exception as err:  # ImportError of a backend, HTTP errors, auth: all one line for the user
        raise DataError(f"{uri}: cannot read ({type(err).__name__}: {_first_line(err)})") from None


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """The remote file copied to a temporary local file (same name), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="distilflow-remote-"))
    name = PurePosixPath(urlparse(uri).path).name or "object"
    dest = tmp / name
    try:
        if uri.lower().startswith(tuple(f"{s}://" for s in ARROW_SCHEMES)):
            fs, path, _ = _check_arrow(uri)
            try:
                with fs.open_input_stream(path) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except OSError as err:
                raise DataError(f"{uri}: cannot read ({_first_line(err)})") from None
        else:
            with _fsspec_open(uri) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stat_digest(uri: str) -> str:
    """What identifies the object's current content without reading it (size, mtime / ETag).

    Cache salts use it; an object that cannot be inspected now gets a fresh value (never reused)."""
    import uuid

    h = hashlib.sha256(uri.encode() + b"\0")
    try:
        if uri.lower().startswith(tuple(f"{s}://" for s in ARROW_SCHEMES)):
            _, _, info = _check_arrow(uri)
            h.update(f"{info.size}|{info.mtime_ns}".encode())
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
            info: Any = fs.info(path)
            keep = {k: info.get(k) for k in ("size", "ETag", "etag", "last_commit", "mtime", "LastModified")}
            h.update(repr(sorted((k, str(v)) for k, v in keep.items() if v is not None)).encode())
    except Exception:
        return uuid.uuid4().hex
    return h.hexdigest()


# ---------------------------------------------------------------- what a pod cannot read

def is_local_path(spec: str | None) -> bool:
    """A path on this machine, as opposed to a URI, a demo/packaged name or a datasets hub name
    (`imdb`, `org/name`): it exists here, has a file suffix, or starts like a path."""
    if not spec or is_remote(spec) or spec.startswith(NOT_PATHS):
        return False
    if spec.startswith(("sqlite:", "file:")):
        return True
    path = Path(spec).expanduser()
    ext = path.suffix[1:]
    file_suffix = ext.isalnum() and not ext.isdigit()  # data.csv, x.iob2; not BAAI/bge-small-en-v1.5
    return path.exists() or file_suffix or spec.startswith((".", "/", "~"))


def local_inputs(cfg: Any) -> list[tuple[str, str]]:
    """(config key, value) of every input of `cfg` (a PipelineConfig) that is a path on this machine."""
    data = cfg.data
    keyed: list[tuple[str, str | None]] = [
        ("data.source", None if data.languages else data.source),
        ("data.test_source", data.test_source),
        ("data.unlabeled_source", data.unlabeled_source),
    ]
    for i, ls in enumerate(data.languages or []):
        keyed += [(f"data.languages.{i}.source", ls.source), (f"data.languages.{i}.test_source", ls.test_source)]
        keyed += [(f"data.languages.{i}.unlabeled.{j}", spec) for j, spec in enumerate(ls.unlabeled or [])]
    keyed += [("teacher.model", cfg.teacher.model), ("transfer.teacher", cfg.transfer.teacher),
              ("tracking.uri", cfg.tracking.uri)]
    return [(key, value) for key, value in keyed if value and is_local_path(value)]
