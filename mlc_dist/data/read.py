"""File formats, filesystems and paths: local or object-store CSV/TSV/Parquet/JSONL as lazy datasets.

Owns the normalized column names and the bad-input error; not label layouts or tokenization.
"""

from __future__ import annotations

import glob
import os
import re

import pyarrow as pa
import pyarrow.csv as pacsv
import ray.data

from mlc_dist.config import DataConfig

# Normalized column names every reader produces (ids keep their own names).
TEXT, TEXT_PAIR, LABELS, KEY, PATH = "text", "text_pair", "labels", "_key", "path"
FEATURES = "features"  # tabular input: one float32 vector per row (data.feature_columns)
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


class DataError(ValueError):
    """Bad input data; the message names the file, column and row."""


def as_data_error(exc: BaseException) -> DataError | None:
    """The DataError a Ray Data task raised, recovered from Ray's wrapper (which keeps only text)."""
    if isinstance(exc, DataError):
        return exc
    # Ray names the class by its module: mlc_dist.data.read.DataError (mlc_dist.data.DataError
    # before data became a package).
    match = re.search(r"mlc_dist\.data(?:\.\w+)?\.DataError: (.+)", str(exc))
    return DataError(match.group(1).strip()) if match else None


def expand_paths(paths: str | list[str]) -> list[str]:
    """One path or many -> a list; local globs expanded (sorted), missing local files an error.

    Object-store URIs pass through untouched: the reader lists them.
    """
    out = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        if "://" in p:
            out.append(p)
        elif any(c in p for c in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise DataError(f"{p}: no file matches this pattern")
            out.extend(found)
        elif not os.path.exists(p):
            raise DataError(f"{p}: file not found")
        else:
            out.append(p)
    return out


def detect_format(paths: list[str], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    for p in paths:
        name = p[:-3] if p.endswith(".gz") else p
        ext = os.path.splitext(name.rstrip("/"))[1].lower()
        if ext in _FORMATS:
            return _FORMATS[ext]
    raise DataError(f"{paths[0]}: cannot tell the file format from the name; set data.format")


def read_table(paths: str | list[str], cfg: DataConfig, string_columns: list[str]) -> ray.data.Dataset:
    """Read CSV/TSV/Parquet/JSONL (local or object store) lazily, with a `path` column."""
    paths = expand_paths(paths)
    fmt = detect_format(paths, cfg.format)
    if fmt in ("csv", "tsv"):
        return ray.data.read_csv(
            paths,
            include_paths=True,
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                             quote_char='"' if cfg.quoting else False,
                                             newlines_in_values=cfg.quoting),
            read_options=pacsv.ReadOptions(column_names=cfg.column_names if not cfg.header else None,
                                           autogenerate_column_names=not cfg.header
                                           and not cfg.column_names),
            # Texts and ids stay strings even when a file happens to hold only digits.
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in string_columns}, strings_can_be_null=True),
        )
    if fmt == "parquet":
        try:
            return ray.data.read_parquet(paths, include_paths=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{_unreadable_parquet(paths) or paths}: unreadable Parquet: {exc}") \
                from None
    return ray.data.read_json(paths, lines=True, include_paths=True)


def _unreadable_parquet(paths: list[str]) -> str | None:
    import pyarrow.parquet as pq

    for p in paths:
        if "://" in p or os.path.isdir(p):
            continue
        try:
            pq.read_metadata(p)
        except (pa.ArrowInvalid, OSError):
            return p
    return None
