"""File formats, filesystems and paths: local or object-store CSV/TSV/Parquet/JSONL as lazy datasets.

Owns the normalized column names and the bad-input error; not label layouts or tokenization.
"""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.datasource import FileBasedDatasource

from mlc_dist import runtime, storage
from mlc_dist.config import DataConfig
from mlc_dist.data import rows, textspec

# Normalized column names every reader produces (ids keep their own names).
TEXT, TEXT_PAIR, LABELS, KEY, PATH = "text", "text_pair", "labels", "_key", "path"
LINE, READ_ERROR = rows.LINE, rows.READ_ERROR  # CSV/TSV/JSONL: a row's line, what was wrong
FEATURES = "features"  # tabular input: one float32 vector per row (data.feature_columns)
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


class DataError(ValueError):
    """Bad input data; the message names the file, column and row."""


def as_data_error(exc: BaseException) -> DataError | None:
    """The DataError a Ray Data task raised, recovered from Ray's wrapper (which keeps only text)."""
    return exc if isinstance(exc, DataError) else runtime.raised_remotely(exc, DataError)


def expand_paths(paths: str | list[str]) -> list[str]:
    """One path or many -> the files to read, in order: local globs expanded (sorted), folders
    (local or object store) listed with their subfolders (sorted), names starting with "." or
    "_" skipped at any depth (Hadoop/Spark's rule: `_SUCCESS`, `.part.crc`, `_tmp/`); a missing
    local file, an unmatched glob or a folder with nothing to read is an error.

    Any other object-store URI passes through untouched: the reader opens it.
    """
    out = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        if "://" not in p and any(c in p for c in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise DataError(f"{p}: no file matches this pattern")
            out.extend(f for found_path in found for f in _files_under(found_path))
        elif "://" not in p and not os.path.exists(p):
            raise DataError(f"{p}: file not found")
        else:
            out.extend(_files_under(p))
    return out


def _files_under(path: str) -> list[str]:
    fs, inner = storage.filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return [path]
    inner = inner.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    files = []
    for info in sorted(infos, key=lambda i: i.path):
        relative = info.path[len(inner) + 1:]
        if info.type == pafs.FileType.File and not any(
                part.startswith((".", "_")) for part in relative.split("/")):
            files.append(storage.join(path.rstrip("/"), relative))
    if not files:
        raise DataError(f"{path}: no input files in this folder (names starting with '.' or "
                        "'_' are skipped)")
    return files


def detect_format(paths: list[str], fmt: str) -> str:
    """The format of the first path with a known extension (data.format when set)."""
    if fmt != "auto":
        return fmt
    for p in paths:
        if _extension(p) in _FORMATS:
            return _FORMATS[_extension(p)]
    raise DataError(f"{paths[0]}: cannot tell the file format from the name; set data.format")


def file_format(path: str, fmt: str) -> str:
    """One file's format: data.format when set, else its extension; an unknown one is refused
    by name, never skipped (Ray's readers skip what they do not know, silently)."""
    if fmt != "auto":
        return fmt
    if _extension(path) not in _FORMATS:
        known = ", ".join(sorted(_FORMATS))
        raise DataError(f"{path}: unknown file type; input files end in {known} (or .gz after "
                        "one of them), or set data.format; names starting with '.' or '_' are "
                        "skipped")
    return _FORMATS[_extension(path)]


def _extension(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    return os.path.splitext(name.rstrip("/"))[1].lower()


def read_table(paths: str | list[str], cfg: DataConfig, string_columns: list[str],
               compose_text: bool = True) -> ray.data.Dataset:
    """Read CSV/TSV/Parquet/JSONL (local or object store) lazily, with a `path` column.

    CSV/TSV/JSONL rows also carry `_line` and `_read_error` (rows.py): a bad row is marked, not
    fatal. Every file is read or refused by name (`file_format`). A config whose text comes from
    several columns (textspec) gets that text as the column `cfg.text_column` names, unless
    `compose_text` is False (the columns as read).
    """
    by_format: dict[str, list[str]] = {}
    for f in expand_paths(paths):
        by_format.setdefault(file_format(f, cfg.format), []).append(f)
    datasets = []
    for fmt, files in by_format.items():
        if fmt == "parquet":
            datasets.append(_read_parquet(files))
        else:
            datasets.append(ray.data.read_datasource(
                RowsDatasource(files, fmt, cfg, string_columns, include_paths=True)))
    ds = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    template = textspec.template_of(cfg) if compose_text else None
    if template:
        ds = ds.map_batches(textspec.ComposeText(template), batch_format="pyarrow")
    return ds


def _read_parquet(files: list[str]) -> ray.data.Dataset:
    # The files are chosen already (`.pq` included), but Ray's Parquet reader takes
    # file_extensions=None as its default ["parquet"] and skips the rest silently: pass the
    # extensions these files have.
    no_extension = [f for f in files if "." not in os.path.basename(f)]
    if no_extension:
        raise DataError(f"{no_extension[0]}: a Parquet file needs an extension (.parquet, .pq, "
                        "...) for Ray's reader to read it; rename it")
    extensions = sorted({os.path.basename(f).rsplit(".", 1)[1].lower() for f in files})
    # Ray 2.60's Parquet reader (DataSourceV2) packs files into read units of up to 128 MiB,
    # one task each: the 8 files of a 100k-row corpus became one block, tokenized by one task on
    # one core (18.7k rows/s). The V1 reader makes a task per file or row group (29.7k rows/s on
    # 2 cores; `mlc-dist bench ingest`). The choice is made here, when the read is planned.
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files, include_paths=True, file_extensions=extensions)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{_unreadable_parquet(files) or files}: unreadable Parquet: {exc}") \
            from None
    finally:
        ctx.use_datasource_v2 = v2


class RowsDatasource(FileBasedDatasource):
    """CSV/TSV/JSON lines through rows.py: one block per file, bad rows marked with their line.

    A whole file is parsed at once: the UTF-8 pre-pass and the line numbers need its bytes.
    """

    def __init__(self, paths: list[str], fmt: str, cfg: DataConfig, string_columns: list[str],
                 **kwargs):
        super().__init__(paths, file_extensions=None, **kwargs)
        self.fmt, self.string_columns = fmt, list(string_columns)
        self.header, self.column_names, self.quoting = cfg.header, cfg.column_names, cfg.quoting

    def _read_stream(self, f, path: str):
        raw = f.readall()
        try:
            if self.fmt == "jsonl":
                yield rows.parse_json_lines(raw, string_columns=self.string_columns)
            else:
                yield rows.parse_delimited(
                    raw, delimiter="\t" if self.fmt == "tsv" else ",", quoting=self.quoting,
                    header=self.header, column_names=self.column_names,
                    string_columns=self.string_columns)
        except rows.UnreadableFile as exc:
            raise DataError(f"{path}: {exc}") from None


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
