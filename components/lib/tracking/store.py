"""Where the MLflow store is and what a failing disk under it looks like to the user: the
tracking URI (tracking.uri, $MLFLOW_TRACKING_URI or work_dir's sqlite store), the sqlite store's
directory checked before MLflow opens it, and disk faults met by MLflow or a step (full,
read-only, forbidden) turned into one line naming the place. lib/tracking/runs.py uses these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from components.lib.core.errors import UserError
from components.lib.settings.cli import (
    DISK_FAULTS,
    check_writable,
    disk_fault,
    disk_fault_line,
    exception_chain,
    fault_path,
    file_in_the_way,
)
from components.lib.settings.config import PipelineConfig


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return default_uri(cfg)


def default_uri(cfg: PipelineConfig) -> str:
    return f"sqlite:///{Path(cfg.work_dir).resolve() / 'mlflow.db'}"


# ---------------------------------------------------------------- a store on a disk that fails

def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (sqlite:////abs/x.db or sqlite:///rel/x.db), else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _uri_key(cfg: PipelineConfig) -> str:
    """The setting the tracking URI came from, for the error line (mlflow.set_tracking_uri exports
    MLFLOW_TRACKING_URI itself: set to the default store, it is still work_dir's)."""
    if cfg.tracking.uri:
        return "tracking.uri"
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return "MLFLOW_TRACKING_URI" if env and env != default_uri(cfg) else "work_dir"


def check_not_file_store(cfg: PipelineConfig, uri: str) -> None:
    """A URI without a scheme (a plain path, e.g. `none` or `./mlruns`) or a file: URI is MLflow's
    file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE is set, with a traceback:
    one line naming the setting and what to use instead."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ("file" if uri.lower().startswith("file:") else "")
    if scheme not in ("", "file") or os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
        return
    key = _uri_key(cfg)
    raise UserError(f"{key} {uri!r}: a path is MLflow's file store, which MLflow no longer accepts; use "
                    f"sqlite:///<dir>/mlflow.db or an http(s):// server, or set tracking.enabled=false to log nothing")


def check_store_dir(cfg: PipelineConfig, uri: str, db: Path) -> None:
    """The sqlite store's directory, made and probed before MLflow opens it: SQLAlchemy retries a
    store it cannot open for ~105 s and then prints a traceback; a file in the way is a FileExistsError."""
    key = _uri_key(cfg)
    if (blocker := file_in_the_way(db.parent)) is not None:
        raise UserError(f"{key} {uri}: {blocker} is a file, not a directory; point {key} at a database "
                        f"in a directory (sqlite:///<dir>/mlflow.db) or set tracking.enabled=false")
    try:
        check_writable(db.parent, key)
    except UserError as err:
        raise UserError(f"{err} (or set tracking.enabled=false)") from None
    db.parent.mkdir(parents=True, exist_ok=True)


# What sqlite says (no errno survives SQLAlchemy) about a disk it cannot write.
_SQLITE_FULL = "database or disk is full"
_SQLITE_UNWRITABLE = ("attempt to write a readonly database", "unable to open database file")
# What writers that raise no OSError say of a disk fault (safetensors: Rust's io::Error); torch.save
# says nothing useful, the atomic writers see the full disk for it (contracts/data.py).
_FAULT_WORDS = (("no space left on device", errno.ENOSPC), ("(os error 28)", errno.ENOSPC),
                ("disk quota exceeded", errno.EDQUOT), ("(os error 122)", errno.EDQUOT),
                ("read-only file system", errno.EROFS), ("(os error 30)", errno.EROFS))


def store_fault(cfg: PipelineConfig, err: Exception, places: Sequence[Path]) -> UserError | None:
    """The one line for a disk fault met by MLflow or the step (a full, read-only or forbidden
    disk), naming the sqlite store, the file, or the fullest / read-only of `places`; else None."""
    if isinstance(err, UserError):
        return None
    uri = tracking_uri(cfg)
    db = sqlite_path(uri) if cfg.tracking.enabled else None
    key = _uri_key(cfg) if db is not None else "work_dir"
    text = " ".join(str(e) for e in exception_chain(err)).lower()
    if db is not None and _SQLITE_FULL in text:
        return UserError(disk_fault_line(errno.ENOSPC, db, key))
    if db is not None and any(t in text for t in _SQLITE_UNWRITABLE) and (code := _unwritable(db.parent)):
        return UserError(disk_fault_line(code, db, key))
    if (fault := disk_fault(err)) is not None:
        if fault_path(fault) is not None:
            return None  # it names its file: run_guarded's line says it
        code = fault.errno
    elif (code := next((c for words, c in _FAULT_WORDS if words in text), None)) is None:
        return None
    where = _faulty_place(code, [*places, *([db.parent] if db else []), Path(tempfile.gettempdir())])
    return None if where is None else UserError(disk_fault_line(code, where))


def _existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def _unwritable(directory: Path) -> int | None:
    """EROFS or EACCES when directory (or its nearest existing ancestor) cannot be written, else None."""
    if (there := _existing(directory)) is None:
        return None
    if os.statvfs(there).f_flag & os.ST_RDONLY:
        return errno.EROFS
    return None if os.access(there, os.W_OK) else errno.EACCES


def _faulty_place(code: int, places: Sequence[Path]) -> Path | None:
    """Of the places a step writes, the one a nameless fault is about: the fullest disk (ENOSPC,
    EDQUOT), a read-only or forbidden one (EROFS, EACCES, EPERM)."""
    found = [(p, there) for p in places if (there := _existing(p)) is not None]
    if not found or code not in DISK_FAULTS:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return min(found, key=lambda pair: _free_bytes(pair[1]))[0]
    return next((p for p, there in found if _unwritable(there)), None)


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def disk_faults_named(cfg: PipelineConfig, places: Sequence[Path] = ()) -> Iterator[None]:
    """A disk fault in the block (MLflow's sqlite store full or read-only, a write naming no file)
    becomes the one-line UserError naming the place; everything else passes through as it was."""
    try:
        yield
    except Exception as err:
        fault = store_fault(cfg, err, places)
        if fault is None:
            raise
        raise fault from err
