"""The shared `python -m components.<step>` entry point: --config, --set, one-line errors.

A user's mistake (UserError) and a fault of the disk a step writes to (an OSError for a full,
read-only or forbidden path, anywhere in the step) end as one `error: ...` line on stderr and
exit 2, both through run_guarded (the CLIs) and step_errors (the kfp component bodies).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel

from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig, load_config

# What the disk can do to a step, each with what a user does about it ({key}: the setting naming the place).
DISK_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space there or point {key} at a bigger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or point {key} at another disk"),
    errno.EROFS: ("read-only file system", "point {key} at a writable disk"),
    errno.EACCES: ("permission denied", "make it writable for this user or point {key} elsewhere"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or point {key} elsewhere"),
}
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # only a write meets these


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default configs/demo.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set student.hidden=128 (repeatable)",
    )


def to_jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if hasattr(result, "__dataclass_fields__"):
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(result), default=str))
    return result


# ---------------------------------------------------------------- disk faults

def disk_fault_line(code: int, path: str | Path, key: str = "work_dir") -> str:
    """`<path>: <what>; <what to do>` for one of DISK_FAULTS; `key` is the setting that chose the place."""
    what, fix = DISK_FAULTS[code]
    if code in (errno.EACCES, errno.EPERM) and hasattr(os, "getuid"):
        what = f"{what} (uid {os.getuid()})"
    return f"{path}: {what}; {fix.format(key=key)}"


def exception_chain(err: BaseException | None) -> Iterator[BaseException]:
    """err, then what it was raised from (or while handling), and so on."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def disk_fault(err: BaseException) -> OSError | None:
    """The OSError behind err (itself or one it was raised from) that is one of DISK_FAULTS, or None.
    Libraries wrap them (MLflow, SQLAlchemy, transformers): the chain is where the errno survives."""
    return next((e for e in exception_chain(err) if isinstance(e, OSError) and e.errno in DISK_FAULTS), None)


def _disk_fault_message(err: BaseException) -> str | None:
    fault = disk_fault(err)
    if fault is None:
        return None
    return disk_fault_line(fault.errno, fault_path(fault) or "(a file this step writes)")


def fault_path(fault: OSError) -> str | None:
    """The path a disk fault is about: a copy's or rename's destination (filename2) for the faults
    only a write meets; pyarrow and plain write() name none (contracts/data.py's writers add theirs)."""
    if fault.errno in WRITE_FAULTS and fault.filename2 is not None:
        return str(fault.filename2)
    return None if fault.filename is None else str(fault.filename)


def check_writable(directory: str | Path, key: str = "work_dir") -> None:
    """Raise the one-line UserError unless a file can be made and written in `directory`, or, while
    it does not exist, in its nearest existing ancestor (nothing is created: a step that fails next
    leaves no empty dirs); the probe file is removed. A full, read-only or forbidden disk fails here,
    before a step works, not in a traceback half-way through or after minutes of SQLAlchemy retries."""
    directory = Path(directory)
    if (blocker := file_in_the_way(directory)) is not None:
        raise UserError(f"{blocker}: a file where a directory is needed (for {directory}); "
                        f"remove it or point {key} elsewhere")
    there = next((p for p in (directory, *directory.parents) if p.exists()), Path.cwd())
    try:
        fd, probe = tempfile.mkstemp(prefix=".distilflow-probe.", suffix=".tmp", dir=there)
    except OSError as err:
        _probe_failed(err, directory, key)
    try:
        os.write(fd, b"probe\n")  # a full disk still lets an empty file be made
    except OSError as err:
        _probe_failed(err, directory, key)
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of path (or path itself) when it is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _probe_failed(err: OSError, where: Path, key: str) -> NoReturn:
    """Raise the probe's one line for a fault a user can fix, else err itself."""
    if err.errno in DISK_FAULTS:
        raise UserError(disk_fault_line(err.errno, where, key)) from None
    raise err


# ---------------------------------------------------------------- one line, exit 2

def _failure(err: BaseException) -> tuple[str, int] | None:
    """(the error line's text, exit code) for a fault a user can fix; None for a bug (traceback)."""
    if isinstance(err, UserError):
        return str(err), 2
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", 130
    if (line := _disk_fault_message(err)) is not None:
        return line, 2
    return None


def run_guarded(fn: Callable[[], Any]) -> int:
    """Run fn; a UserError or a disk fault becomes one line on stderr and exit code 2, never a traceback."""
    try:
        result = fn()
    except (Exception, KeyboardInterrupt) as err:
        failure = _failure(err)
        if failure is None:
            raise
        print(f"error: {failure[0]}", file=sys.stderr)
        return failure[1]
    if result is not None:
        print(json.dumps(to_jsonable(result), indent=2, default=str))
    return 0


@contextlib.contextmanager
def step_errors() -> Iterator[None]:
    """run_guarded for a kfp component body: the same one line, then SystemExit with its code, so
    the task fails (kfp.local and the KFP launcher go by the exit status) without a traceback."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        failure = _failure(err)
        if failure is None:
            raise
        print(f"error: {failure[0]}", file=sys.stderr, flush=True)
        raise SystemExit(failure[1]) from None


def step_main(run: Callable[[PipelineConfig], Any], description: str, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_guarded(lambda: run(load_config(args.config, args.overrides)))
