"""The per-user cache of packaged teachers that are converted (multilingual.py) or assembled
(mpnet.py) once: $DISTILFLOW_CACHE, default ~/.cache/distilflow. A module of its own so that
assets.py, which maps `packaged:` names onto those builders, and the builders do not import each other."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where packaged teachers that need converting or assembling are kept, once per user."""
    return Path(os.environ.get("DISTILFLOW_CACHE") or Path.home() / ".cache" / "distilflow").expanduser()
