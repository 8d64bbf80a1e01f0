"""The process environment: variables set for a block and put back after it, and pins of the
installed packages a logged model needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block, then restore each one as it
    was (set or unset); subprocesses started inside inherit them."""
    def apply(items: dict[str, str | None]) -> None:
        for key, value in items.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {k: os.environ.get(k) for k in values}
    apply(values)
    try:
        yield
    finally:
        apply(saved)


def pip_requirements(packages: Sequence[str]) -> list[str]:
    """`pkg==version` pins of the installed packages a logged MLflow model needs (local version
    tags such as +cpu dropped: indexes do not serve them); packages not installed are left out."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in packages:
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return reqs
