"""Files the steps write and read whole: atomic writes (a temp beside the target, renamed when
complete, removed on failure; a killed writer's stale temps swept by the next write of the same
target), the published file modes, and content digests. lib/contracts/data.py's tables and every
step's outputs are written through here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from components.lib.core.errors import UserError
from components.lib.settings.cli import DISK_FAULTS, WRITE_FAULTS, disk_fault


def _umask() -> int:
    # /proc first: the os.umask(0) round trip briefly changes it for every thread.
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp make 0600/0700 entries; give the published ones the usual umask mode so
    other users of a shared volume (a KFP pod with another uid) can read them."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


# Temps are named .<target>.<owner>.<random>.tmp beside their target; owner = <tag>-<pid>, tag naming
# this machine's boot and pid namespace, so the next writer of the same target can tell a live
# writer's temp (keep) from the torn remains of a killed one (remove): see _stale.
STALE_AFTER_S = 3600.0  # a temp from elsewhere (another container or host), untouched this long, is dead


def _namespace_tag() -> str:
    """8 hex digits naming this boot of this machine and this pid namespace: pids compare within it."""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return hashlib.sha256(f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}".encode()).hexdigest()[:8]
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # no /proc: host name, pids as seen


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_namespace_tag()}-{os.getpid()}."


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # mkstemp/mkdtemp's random part is 8 of [a-z0-9_]; temps named before the owner tag have none
    return re.compile(rf"\.{re.escape(path.name)}\.(?:(?P<tag>[0-9a-f]{{8}})-(?P<pid>\d+)\.)?[a-z0-9_]{{8}}\.tmp")


def _old_name(path: Path) -> Path:
    """Where atomic_dir parks the previous `path` for the instant between its two renames."""
    return path.with_name(f".{path.name}.old-{_namespace_tag()}-{os.getpid()}")


def _old_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(path.name)}\.old-(?P<tag>[0-9a-f]{{8}})-(?P<pid>\d+)")


def _process_start(pid: int) -> float | None:
    """When process pid started (epoch seconds), from /proc; None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return int(btime.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, changed: float) -> bool:
    """Whether process pid (of this namespace) may still be the writer of a temp last changed
    (ctime: never set back) at `changed`: it runs, and it did not start after that (a reused pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = _process_start(pid)
    return started is None or started <= changed + 2.0  # btime has 1 s steps


def _newest_mtime(entry: Path) -> float:
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for sub in entry.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, sub.lstat().st_mtime)
    return newest


def _stale(entry: Path, tag: str | None, pid: str | None) -> bool:
    """A temp of this namespace is stale when its writer is gone; any other (another container's or
    host's, or one named before the owner tag) when nothing in it changed for STALE_AFTER_S."""
    if tag == _namespace_tag() and pid is not None:
        return not _owner_alive(int(pid), entry.lstat().st_ctime)
    return time.time() - _newest_mtime(entry) > STALE_AFTER_S


def sweep_stale_temps(path: Path) -> list[Path]:
    """Remove the temps a killed writer of `path` left beside it (its own pattern only, never another
    target's, never a live writer's); returns what went. Errors are ignored: this is tidying."""
    pattern, old, gone = _temp_pattern(path), _old_pattern(path), []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if not entry.name.startswith(f".{path.name}."):
                continue
            tmp = Path(entry.path)
            if (m := old.fullmatch(entry.name)) is not None:
                # A writer killed between atomic_dir's two renames: `path` is gone and this holds the
                # last complete version, which goes back; killed after the second, it is only litter.
                with contextlib.suppress(OSError):
                    if _stale(tmp, m["tag"], m["pid"]):
                        if os.path.lexists(path):
                            shutil.rmtree(tmp, ignore_errors=True)
                        else:
                            os.replace(tmp, path)
                        gone.append(tmp)
                continue
            if not (m := pattern.fullmatch(entry.name)):
                continue
            with contextlib.suppress(OSError):
                if _stale(tmp, m["tag"], m["pid"]):
                    shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
                    gone.append(tmp)
    return gone


def _named(err: OSError, tmp: Path, path: Path) -> OSError:
    """A disk fault met while writing `tmp` (for `path`), naming the target instead of the temp
    (or nothing: pyarrow's and write()'s name no file), so the one error line says where."""
    name = err.filename
    inside = name is not None and (Path(name) == tmp or tmp in Path(name).parents)
    if err.errno not in DISK_FAULTS or not (inside or (name is None and err.errno in WRITE_FAULTS)):
        return err
    target = path / Path(name).relative_to(tmp) if inside and Path(name) != tmp else path
    return OSError(err.errno, os.strerror(err.errno), str(target))


NEARLY_FULL = 1 << 20  # bytes left: a writer that failed on a disk this full failed for that


def _nearly_full(directory: Path) -> bool:
    """Whether the disk holding directory has less than NEARLY_FULL left (for root: reserved blocks too)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < NEARLY_FULL


def _reraise(err: Exception, tmp: Path, path: Path) -> NoReturn:
    """err, or the disk fault it is, naming `path`: torch.save on a full disk raises a RuntimeError
    ("unexpected pos ..."), so a failed write beside a full disk is ENOSPC whatever it says.
    Looked at before the temp goes (its bytes still fill the disk)."""
    named = _named(err, tmp, path) if isinstance(err, OSError) else err
    if named is err and not isinstance(err, UserError) and disk_fault(err) is None and _nearly_full(path.parent):
        named = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if named is err:
        raise err
    raise named from err


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename onto it only if the block succeeds (the temp goes
    whatever happens; a killed writer's is swept by the next one)."""
    path = Path(path)
    tmp_path = _make_temp(path, is_dir=False)
    try:
        yield tmp_path
        publish_mode(tmp_path, is_dir=False)
        os.replace(tmp_path, path)
    except Exception as err:
        _reraise(err, tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside `path`; it replaces `path` (and anything there) only on success."""
    path = Path(path)
    tmp = _make_temp(path, is_dir=True)
    try:
        yield tmp
        publish_mode(tmp, is_dir=True)
        if path.exists():
            old = _old_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except Exception as err:
        _reraise(err, tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_new_dir(path: str | Path) -> Iterator[Path]:
    """atomic_dir for a dir made once and then only read (a cache entry): the temp dir is renamed to
    `path` on success unless another writer's copy got there first, which is then kept and ours
    dropped. An existing `path` is never replaced (readers may have it open)."""
    path = Path(path)
    tmp = _make_temp(path, is_dir=True)
    try:
        yield tmp
        publish_mode(tmp, is_dir=True)
        try:
            os.rename(tmp, path)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not path.is_dir():
                raise
    except Exception as err:
        _reraise(err, tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_temp(path: Path, is_dir: bool) -> Path:
    """The temp beside path (its parent made), after sweeping the stale ones of path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path)
        if is_dir:
            return Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        return Path(tmp)
    except OSError as err:
        if err.errno in DISK_FAULTS:  # name the target, not a temp that never was
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
        raise


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(root: str | Path, parts: tuple[str, ...] = (".",)) -> str:
    """sha256 over (path relative to root, sha256) of every file under root/<part>, in path order."""
    h = hashlib.sha256()
    for part in parts:
        for f in sorted(p for p in (Path(root) / part).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(root)}\n{sha256_file(f)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- building tables
