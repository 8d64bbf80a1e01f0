"""constraints.txt pins what produced the README's figures: `make setup` installs with it, so a
fresh machine gets the same packages. Kept current: every requirement in pyproject.toml (base and
the extras the Makefile installs) is pinned there at a version it admits, nothing is pinned twice,
and the venv the tests run in holds exactly the pinned versions (CI builds it with `make setup`)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("demo", "dev", "multilingual")  # what the Makefile's setup installs
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"constraints.txt:{n}: expected name==version, got {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"constraints.txt:{n}: {name} pinned twice"
        out[name] = m.group(2)
    return out


def test_every_requirement_is_pinned_at_a_version_it_admits():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [x for e in EXTRAS for x in project["optional-dependencies"][e]]
    pinned = pins()
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first from TORCH_SPEC (CPU or CUDA build), never constrained
            assert name not in pinned
            continue
        assert name in pinned, f"{req.name} (pyproject.toml) is not pinned in constraints.txt: run `make constraints`"
        assert req.specifier.contains(Version(pinned[name]), prereleases=True), \
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {req}"


def test_the_test_venv_holds_the_pinned_versions():
    wrong = []
    for name, want in pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name}: pinned {want}, not installed")
            continue
        if got != want:
            wrong.append(f"{name}: pinned {want}, installed {got}")
    assert not wrong, "the venv differs from constraints.txt (make setup, or make constraints after an upgrade): " + "; ".join(wrong)
