"""Run-level faults a user can cause, provoked for real: each is one `error:` line (naming the path
or key and what to do), exit 2, within seconds, and nothing partial left behind.

- a step failing under `distilflow run`: the step's own error is the last line;
- a full disk (a real 2 MB tmpfs), a read-only work_dir (a real read-only bind mount), with
  tracking off and on (the sqlite store under work_dir: seconds, not SQLAlchemy's ~105 s);
- tracking.uri a sqlite path below a regular file;
- the temps a killed writer left beside its output: the next writer of that output sweeps its
  own stale ones only.

The mounts need root (CAP_SYS_ADMIN): those tests skip, saying why, where mount is refused.
"""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.lib.contracts import data, files
from components.lib.settings.cli import run_guarded
from tests.helpers import make_topic_texts

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = PROJECT_ROOT / "configs" / "tiny.yaml"
FAST_S = 60  # "within seconds": generous for a loaded 2-core machine; SQLAlchemy's retries take ~105 s


# ---------------------------------------------------------------- real mounts

def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture()
def small_disk(tmp_path) -> Iterator[callable]:
    """small_disk(free_kib) -> a real 2 MB tmpfs with a ballast file leaving about free_kib free."""
    disk = tmp_path / "disk"
    disk.mkdir()
    got = _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or 'mount refused'}): needs root")

    def fill(free_kib: int) -> Path:
        total = os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize
        with open(disk / "ballast", "wb") as f:
            f.write(b"\0" * max(0, total - free_kib * 1024))
        return disk

    yield fill
    _umount(disk)


@pytest.fixture()
def read_only_dir(tmp_path) -> Iterator[Path]:
    """A real read-only directory: a read-only bind mount (root ignores chmod 0555, so that is only
    the fallback for a user who may not mount)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    got = _mount("--bind", str(src), str(ro))
    if got.returncode == 0:
        if _mount("-o", "remount,bind,ro", str(ro)).returncode == 0:
            yield ro
            _umount(ro)
            return
        _umount(ro)
    if os.geteuid() == 0:
        pytest.skip(f"no read-only bind mount here ({got.stderr.strip() or 'refused'}) and root ignores chmod 0555")
    ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)


def write_topics_csv(path: Path) -> Path:
    texts, labels, names = make_topic_texts(60, seed=1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([t, names[y]] for t, y in zip(texts, labels, strict=True))
    return path


def run_cli(args: list[str], tmp_path: Path, work: Path, *sets: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(DISTILFLOW_WORK_DIR=str(work), DISTILFLOW_TINY_DATA=str(write_topics_csv(tmp_path / "topics.csv")))
    cmd = [sys.executable, *args, "--config", str(TINY), *[a for s in sets for a in ("--set", s)]]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


def assert_one_line(proc: subprocess.CompletedProcess, seconds: float, starts: str) -> str:
    """Exit 2, no traceback, the last stderr line an `error:` line starting with `starts`."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {starts}"), proc.stderr
    assert seconds < FAST_S, f"{seconds:.0f}s: {last}"
    print(f"{' '.join(proc.args[1:3])}: exit 2 after {seconds:.1f}s: {last}")  # the figure, with -s
    return last


def leftovers(root: Path) -> list[str]:
    """What a failed step must not leave: its output, its temps, a half-made sqlite store."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".tmp", ".parquet", ".db", "-journal")) or p.name == "data")


PREPARE = ["-m", "components.prepare_data"]


# ---------------------------------------------------------------- 1. a step failing under `distilflow run`

@pytest.mark.integration
def test_failed_step_s_own_error_is_the_last_line(tmp_path):
    """The line prepare-data's CLI prints for a missing data.source is the end of `distilflow run`'s
    stderr (the pipeline and step named before it), not kfp.local's "Inner task failed"."""
    work = tmp_path / "work"
    step, _ = run_cli(PREPARE, tmp_path, tmp_path / "step-work", "data.source=/nonexistent.csv")
    own = step.stderr.strip().splitlines()[-1]
    assert step.returncode == 2 and own.startswith("error: /nonexistent.csv: "), step.stderr
    proc, seconds = run_cli(["-m", "pipeline", "run"], tmp_path, work, "data.source=/nonexistent.csv")
    last = assert_one_line(proc, seconds, "pipeline distilflow-tiny failed at prepare-data: ")
    assert last.startswith(f"error: pipeline distilflow-tiny failed at prepare-data: {own[len('error: '):]} (")
    assert "whole: " in last and "Inner task failed" not in last
    assert own in proc.stderr.splitlines()  # the step's line itself, in the tail of its log above
    assert "executor_input" not in proc.stderr  # the tail is what the step said, not kfp's input JSON
    assert leftovers(work) == ["mlflow.db"]  # the run's store (its parent run closed FAILED); no data


# ---------------------------------------------------------------- 2. full, read-only disks

@pytest.mark.parametrize("tracking", [False, True], ids=["tracking-off", "tracking-on"])
def test_full_disk_mid_step_is_one_line_and_leaves_nothing(tracking, small_disk, tmp_path):
    """16 KiB free: the probe passes, then a table (tracking off) or the sqlite store (on) meets
    ENOSPC half-way; the line names that file, the temps and the half-migrated store are gone."""
    disk = small_disk(16)
    work = disk / "work"
    proc, seconds = run_cli(PREPARE, tmp_path, work, f"tracking.enabled={str(tracking).lower()}")
    last = assert_one_line(proc, seconds, f"{work}/")
    want = f"{work}/mlflow.db" if tracking else f"{work}/data/"
    assert last.startswith(f"error: {want}") and "no space left on device; free space there" in last, last
    assert leftovers(disk) == []


def test_full_disk_fails_before_the_step_works(small_disk, tmp_path):
    """No room at all: the writable-work-dir probe says so first, naming work_dir."""
    disk = small_disk(0)
    proc, seconds = run_cli(PREPARE, tmp_path, disk / "work", "tracking.enabled=false")
    last = assert_one_line(proc, seconds, f"{disk / 'work'}: no space left on device;")
    assert "work_dir" in last and leftovers(disk) == [] and not (disk / "work").exists()
    assert not [p for p in disk.iterdir() if p.name.startswith(".distilflow-probe.")]  # the probe went


@pytest.mark.parametrize("tracking", [False, True], ids=["tracking-off", "tracking-on"])
def test_read_only_work_dir(tracking, read_only_dir, tmp_path):
    """Tracking on, the sqlite store is under work_dir too: seconds, not ~105 s of SQLAlchemy retries."""
    work = read_only_dir / "work"
    proc, seconds = run_cli(PREPARE, tmp_path, work, f"tracking.enabled={str(tracking).lower()}")
    last = assert_one_line(proc, seconds, f"{work}: ")
    assert ("read-only file system; point work_dir at a writable disk" in last
            or "permission denied" in last), last
    assert not work.exists()


def test_read_only_tracking_store(read_only_dir, tmp_path):
    """work_dir writable, tracking.uri on the read-only disk: the store's own probe names the key."""
    uri = f"sqlite:///{read_only_dir}/mlflow.db"
    proc, seconds = run_cli(PREPARE, tmp_path, tmp_path / "work", f"tracking.uri={uri}")
    last = assert_one_line(proc, seconds, f"{read_only_dir}: ")
    assert "point tracking.uri at a writable disk (or set tracking.enabled=false)" in last or "permission" in last
    assert leftovers(tmp_path / "work") == []


def test_read_only_work_dir_under_distilflow_run(read_only_dir, tmp_path):
    proc, seconds = run_cli(["-m", "pipeline", "run"], tmp_path, read_only_dir / "work", "tracking.enabled=false")
    assert_one_line(proc, seconds, f"{read_only_dir / 'work'}")
    assert not (read_only_dir / "work").exists()


def test_run_guarded_names_the_path_of_a_real_disk_fault(read_only_dir, capsys):
    """Any OSError of a full, read-only or forbidden disk, wherever in a step: one line, exit 2."""
    target = read_only_dir / "out.json"
    assert run_guarded(lambda: target.write_text("{}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {target}: "), err


def test_atomic_writers_name_the_target_and_leave_no_temp(small_disk):
    """pyarrow's ENOSPC names no file: the atomic writer names the table it was writing."""
    import pyarrow as pa

    disk = small_disk(8)
    target = disk / "out" / "big.parquet"
    table = pa.table({"x": [os.urandom(64).hex() for _ in range(20_000)]})
    with pytest.raises(OSError) as err:
        data.write_table(table, target)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert not target.exists() and not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_torch_save_on_a_full_disk_is_enospc_naming_the_target(small_disk):
    """torch.save says only "unexpected pos ..." (a RuntimeError): the atomic writer sees the full disk."""
    import torch

    disk = small_disk(16)
    target = disk / "student" / "model.pt"
    with pytest.raises(OSError) as err, data.atomic_path(target) as tmp:
        torch.save({"w": torch.zeros(100_000)}, tmp)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not target.exists() and not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_step_run_names_the_disk_a_safetensors_write_filled(small_disk):
    """safetensors raises its own error ("... No space left on device (os error 28)"), no OSError:
    the step's run names the place it writes on that disk."""
    import torch
    from safetensors.torch import save_file

    from components.lib.core.errors import UserError
    from components.lib.tracking import runs as tracking
    from tests.helpers import tiny_cfg

    disk = small_disk(16)
    cfg = tiny_cfg(disk / "work", None)
    with pytest.raises(UserError) as err, tracking.step_run(cfg, "finetune-teacher"):
        save_file({"w": torch.zeros(100_000)}, str(disk / "model.safetensors"))
    assert str(err.value) == f"{disk / 'work'}: no space left on device; free space there or point work_dir at a bigger disk"


# ---------------------------------------------------------------- 3. tracking.uri below a file

def test_sqlite_uri_below_a_regular_file(tmp_path):
    (tmp_path / "x").mkdir()
    blocker = tmp_path / "x" / "file.txt"
    blocker.write_text("not a directory\n")
    uri = f"sqlite:///{blocker}/mlflow.db"
    proc, seconds = run_cli(PREPARE, tmp_path, tmp_path / "work", f"tracking.uri={uri}")
    last = assert_one_line(proc, seconds, f"tracking.uri {uri}: {blocker} is a file, not a directory; ")
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert blocker.read_text() == "not a directory\n" and leftovers(tmp_path / "work") == []
    assert last.endswith("or set tracking.enabled=false")



@pytest.mark.parametrize("uri", ["none", "./mlruns", "file:///tmp/mlruns"])
def test_a_path_as_tracking_uri_is_one_line_naming_the_key(uri, tmp_path):
    """A plain path (or file: URI) is MLflow's file store, which MLflow 3 refuses with a traceback."""
    proc, seconds = run_cli(PREPARE, tmp_path, tmp_path / "work", f"tracking.uri={uri}")
    last = assert_one_line(proc, seconds, f"tracking.uri {uri!r}: a path is MLflow's file store, ")
    assert last.endswith("or set tracking.enabled=false to log nothing")
    assert leftovers(tmp_path / "work") == [] and not (tmp_path / "mlruns").exists()

# ---------------------------------------------------------------- 4. a killed writer's temps

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(parent: Path, name: str, age_s: float = 0.0) -> Path:
    tmp = parent / name
    tmp.mkdir()
    (tmp / "model.onnx").write_bytes(b"\0" * 1024)
    if age_s:
        old = time.time() - age_s
        for p in (tmp / "model.onnx", tmp):
            os.utime(p, (old, old))
    return tmp


def test_next_writer_sweeps_its_own_stale_temps_only(tmp_path):
    out = tmp_path / "export"
    tag = files._namespace_tag()
    old = _plant(tmp_path, ".export.k3j2h1xa.tmp", age_s=2 * files.STALE_AFTER_S)  # named before owner tags
    fresh = _plant(tmp_path, ".export.q9w8e7r6.tmp", age_s=60)  # maybe another container's, live
    dead = _plant(tmp_path, f".export.{tag}-{_dead_pid()}.a1b2c3d4.tmp")  # this machine, writer gone
    live = _plant(tmp_path, f".export.{tag}-{os.getpid()}.z9y8x7w6.tmp", age_s=2 * files.STALE_AFTER_S)
    foreign_old = _plant(tmp_path, f".export.0badc0de-{os.getpid()}.m1n2b3v4.tmp", age_s=2 * files.STALE_AFTER_S)
    others = [_plant(tmp_path, n, age_s=2 * files.STALE_AFTER_S)  # other targets' temps, however old
              for n in (".eval.k3j2h1xa.tmp", ".export.v2.k3j2h1xa.tmp", f".exported.{tag}-1.a1b2c3d4.tmp")]
    with data.atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"new")
    assert (out / "model.onnx").read_bytes() == b"new"
    assert not old.exists() and not dead.exists() and not foreign_old.exists()
    assert fresh.exists() and live.exists() and all(p.exists() for p in others)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export.") and p.name.endswith(".tmp"))
    assert left == sorted([fresh.name, live.name, ".export.v2.k3j2h1xa.tmp"])


def test_atomic_path_sweeps_a_killed_writer_s_temp_file(tmp_path):
    """SIGKILL mid-write (no finally runs) leaves the temp; the next write of that file removes it."""
    target = tmp_path / "report.json"
    child = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); from components.lib.contracts import data\n"
        "with data.atomic_path(sys.argv[2]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(PROJECT_ROOT), str(target)], capture_output=True, timeout=120)
    assert child.returncode == -9
    torn = [p for p in tmp_path.iterdir() if p.name.startswith(".report.json.")]
    assert len(torn) == 1 and not target.exists()
    data.write_json(target, {"ok": True})
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("died_after", ["first rename", "second rename"])
def test_a_writer_killed_inside_atomic_dirs_swap_leaves_the_last_complete_version(tmp_path, died_after):
    """atomic_dir replaces a dir in two renames (old away, new in). A process killed -9 between them
    leaves the target missing and the previous version parked: the next writer's sweep puts it back;
    killed after both, the parked copy is only litter and goes."""

    from components.lib.contracts.files import sweep_stale_temps

    target = tmp_path / "data"
    target.mkdir()
    (target / "v").write_text("1")
    new = tmp_path / "new"
    new.mkdir()
    (new / "v").write_text("2")
    second = "os.replace(sys.argv[2], sys.argv[1]); " if died_after == "second rename" else ""
    code = ("import os, signal, sys; from pathlib import Path; from components.lib.contracts.files import _old_name; "
            f"os.replace(sys.argv[1], _old_name(Path(sys.argv[1]))); {second}os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(target), str(new)], cwd=PROJECT_ROOT, timeout=60)
    assert proc.returncode == -9
    parked = [p for p in tmp_path.iterdir() if p.name.startswith(".data.old-")]
    assert len(parked) == 1 and target.exists() == (died_after == "second rename")
    gone = sweep_stale_temps(target)
    assert gone == parked and not parked[0].exists()
    assert (target / "v").read_text() == ("2" if died_after == "second rename" else "1")
