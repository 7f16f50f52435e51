"""Ray Data: read -> validate -> tokenize -> split, for the layouts users have.

Owns file formats, label layouts, bad-input errors and streaming tokenization. No torch loops:
padding to a batch happens in the consumer (train.py / score.py) through `pad_batch`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import ray.data

from mlc_dist.config import DataConfig
from mlc_dist.labels import LabelSpace

log = logging.getLogger(__name__)

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
    match = re.search(r"mlc_dist\.data\.DataError: (.+)", str(exc))
    return DataError(match.group(1).strip()) if match else None


def _as_list(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def _expand_local(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
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
    paths = _expand_local(_as_list(paths))
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


def read_label_table(path: str, cfg: DataConfig) -> pa.Table:
    """A separate labels table (ids + 0/1 columns), read whole: it holds no text, only bits."""
    refs = read_table(path, cfg, string_columns=cfg.id_columns).to_arrow_refs()
    table = pa.concat_tables(ray.get(refs)) if refs else None
    if table is None or table.num_rows == 0:
        raise DataError(f"{path}: labels file is empty")
    missing = [c for c in cfg.id_columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing id column(s) {missing}; columns are {table.column_names}")
    return table.drop_columns([PATH])


def label_space_for(cfg: DataConfig, labels_table: pa.Table | None = None) -> LabelSpace:
    space = _label_names(cfg, labels_table)
    unknown = sorted(set(cfg.label_categories) - set(space.names))
    if unknown:
        raise DataError(f"data.label_categories names {unknown}, which are not labels "
                        f"({list(space.names)[:10]}...)")
    return LabelSpace(space.names, {k: tuple(v) for k, v in cfg.label_categories.items()})


def _label_names(cfg: DataConfig, labels_table: pa.Table | None) -> LabelSpace:
    if cfg.label_names_file:
        return LabelSpace.from_file(cfg.label_names_file)
    if cfg.label_names:
        return LabelSpace.from_names(cfg.label_names)
    if cfg.label_columns:
        return LabelSpace.from_names(cfg.label_columns)
    if labels_table is not None:
        return LabelSpace.from_names(c for c in labels_table.column_names if c not in cfg.id_columns)
    raise DataError("no labels configured: set data.label_columns, data.label_list_column "
                    "(+ data.label_names[_file]) or data.train_labels")


def _row_ref(batch: pa.Table, row: int, id_columns: list[str]) -> str:
    path = batch.column(PATH)[row].as_py() if PATH in batch.column_names else "<input>"
    ids = ", ".join(f"{c}={batch.column(c)[row].as_py()!r}" for c in id_columns
                    if c in batch.column_names)
    return f"{path}: row with {ids}" if ids else f"{path}: row {row} of a batch"


class Normalize:
    """Map a raw batch to the normalized columns: ids, text[, text_pair][, labels], _key.

    Raises DataError naming file, column and row for a missing column or an unknown label.
    Null texts become "" and are flagged by `_empty`; callers count them, never drop silently.
    """

    def __init__(self, cfg: DataConfig, label_space: LabelSpace | None,
                 labels_table: pa.Table | None = None, passthrough: list[str] | None = None,
                 skip_unlabelled: bool = False):
        self.cfg = cfg
        self.skip_unlabelled = skip_unlabelled
        self.label_space = label_space
        self.passthrough = passthrough if passthrough is not None else cfg.id_columns
        self.labels_by_id = None
        if labels_table is not None and label_space is not None:
            keys = _keys_of(labels_table, cfg.id_columns)
            matrix = _wide_labels(labels_table, label_space, cfg, source="labels file")
            self.labels_by_id = dict(zip(keys, matrix))

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        inputs = cfg.feature_columns or [cfg.text_column, *filter(None, [cfg.text_pair_column])]
        needed = [*inputs, *self.passthrough]
        if self.label_space is not None and self.labels_by_id is None:
            needed += [cfg.label_list_column] if cfg.label_list_column else list(cfg.label_columns or [])
        missing = [c for c in needed if c not in batch.column_names]
        if missing:
            paths = sorted(set(batch.column(PATH).to_pylist())) if PATH in batch.column_names else []
            raise DataError(f"{', '.join(paths) or '<input>'}: missing column(s) {missing}; "
                            f"columns are {[c for c in batch.column_names if c != PATH]}")
        if self.skip_unlabelled and self.labels_by_id is not None:
            keys = _keys_of(batch, cfg.id_columns)
            batch = batch.filter(pa.array([k in self.labels_by_id for k in keys], pa.bool_()))
        out = {c: batch.column(c) for c in self.passthrough}
        if cfg.feature_columns:
            return self._tabular(batch, out)
        text = batch.column(cfg.text_column).cast(pa.string())
        empty = pc.or_(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text.fill_null("")), ""))
        out[TEXT] = text.fill_null("")
        if cfg.text_pair_column:
            out[TEXT_PAIR] = batch.column(cfg.text_pair_column).cast(pa.string()).fill_null("")
        out["_empty"] = empty
        out[KEY] = pa.array(_keys_of(batch, cfg.id_columns, cfg.text_column, cfg.text_pair_column))
        if self.label_space is not None:
            out[LABELS] = _tensor_column(self._labels(batch, out[KEY].to_pylist()))
        out[PATH] = batch.column(PATH) if PATH in batch.column_names else pa.nulls(len(batch),
                                                                                    pa.string())
        return pa.table(out)

    def _tabular(self, batch: pa.Table, out: dict) -> pa.Table:
        """Feature columns -> one float32 vector column; rows with a missing value are an error."""
        cfg = self.cfg
        matrix = np.zeros((len(batch), len(cfg.feature_columns)), np.float32)
        for j, name in enumerate(cfg.feature_columns):
            try:
                matrix[:, j] = batch.column(name).cast(pa.float32()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
                raise DataError(f"{_row_ref(batch, 0, cfg.id_columns)}: feature column {name!r} "
                                f"is not numeric: {exc}") from None
        bad = np.isnan(matrix).any(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{_row_ref(batch, i, cfg.id_columns)}: a feature column "
                            f"({cfg.feature_columns}) is null or NaN")
        out[FEATURES] = _tensor_column(matrix)
        out[TEXT] = pa.array([""] * len(batch), pa.string())
        out["_empty"] = pa.array(np.zeros(len(batch), bool))
        out[KEY] = pa.array(_keys_of(batch, cfg.id_columns) if cfg.id_columns else
                            [hashlib.blake2b(r.tobytes(), digest_size=12).hexdigest()
                             for r in matrix])
        if self.label_space is not None:
            out[LABELS] = _tensor_column(self._labels(batch, out[KEY].to_pylist()))
        out[PATH] = batch.column(PATH) if PATH in batch.column_names else pa.nulls(len(batch),
                                                                                    pa.string())
        return pa.table(out)

    def _labels(self, batch: pa.Table, keys: list[str]) -> np.ndarray:
        cfg, space = self.cfg, self.label_space
        if self.labels_by_id is not None:
            rows = []
            for i, k in enumerate(keys):
                if k not in self.labels_by_id:
                    raise DataError(f"{_row_ref(batch, i, cfg.id_columns)}: id not found in the "
                                    f"labels file ({cfg.train_labels})")
                rows.append(self.labels_by_id[k])
            return np.stack(rows) if rows else np.zeros((0, len(space)), np.float32)
        if cfg.label_list_column:
            col = batch.column(cfg.label_list_column).to_pylist()
            matrix = np.zeros((len(col), len(space)), np.float32)
            for i, value in enumerate(col):
                items = value if isinstance(value, list) else (
                    [] if value is None or str(value).strip() == "" else str(value).split(cfg.label_list_sep))
                for item in items:
                    try:
                        matrix[i, space.resolve(item)] = 1.0
                    except KeyError:
                        raise DataError(
                            f"{_row_ref(batch, i, cfg.id_columns)}: column {cfg.label_list_column!r} "
                            f"has label {item!r}, which is not in the label space of "
                            f"{len(space)} labels") from None
            return matrix
        return _wide_labels(batch, space, cfg)


def _wide_labels(batch: pa.Table, space: LabelSpace, cfg: DataConfig,
                 source: str | None = None) -> np.ndarray:
    """0/1 per label; for a multi-category label, its category index (the column holds the index
    or the category name)."""
    names = space.names
    missing = [c for c in names if c not in batch.column_names]
    if missing:
        raise DataError(f"{source or batch.column(PATH)[0].as_py()}: missing label column(s) "
                        f"{missing}")
    matrix = np.zeros((len(batch), len(names)), np.float32)
    for j, name in enumerate(names):
        values = batch.column(name).to_numpy(zero_copy_only=False)
        categories = space.categories.get(name)
        if categories:
            values = _category_indices(values, categories)
        allowed = range(len(categories)) if categories else (0, 1)
        ok = np.isin(values, allowed) if values.dtype != object else np.array(
            [v in allowed for v in values])
        if not ok.all():
            i = int(np.argmin(ok))
            where = source if source else _row_ref(batch, i, cfg.id_columns)
            expected = (f"a category index 0..{len(categories) - 1} or one of {list(categories)}"
                        if categories else "0 or 1")
            raise DataError(f"{where}: label column {name!r} has value "
                            f"{batch.column(name)[i].as_py()!r}; expected {expected}")
        matrix[:, j] = values.astype(np.float32)
    return matrix


def _category_indices(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    # Names map to their index; integers (or digit strings) pass through; anything else -> -1.
    lookup = {c: i for i, c in enumerate(categories)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        text = "" if v is None else str(v).strip()
        if text in lookup:
            out[i] = lookup[text]
        elif isinstance(v, (int, np.integer)) or text.lstrip("-").isdigit():
            out[i] = int(text)
        else:
            out[i] = -1
    return out


def _keys_of(batch: pa.Table, id_columns: list[str], text_column: str | None = None,
             pair_column: str | None = None) -> list[str]:
    # A stable row key: the id columns when given, else a hash of the text (duplicates of one
    # text then share a key and land on the same side of a split, which avoids leakage).
    if id_columns:
        cols = [batch.column(c).cast(pa.string()).fill_null("").to_pylist() for c in id_columns]
        return ["\x1f".join(vals) for vals in zip(*cols)]
    cols = [batch.column(c).cast(pa.string()).fill_null("").to_pylist()
            for c in (text_column, pair_column) if c]
    return [hashlib.blake2b("\x1f".join(v).encode(), digest_size=12).hexdigest() for v in zip(*cols)]


def _tensor_column(matrix: np.ndarray) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(matrix.astype(np.float32))


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    # Cached per process: Ray Data task workers are reused, so each loads a tokenizer once.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class Tokenize:
    """Fast-tokenizer UDF: ragged `input_ids` (no padding: each batch is padded on use).

    Passed to `map_batches` as an instance, so it runs as fused tasks with the read.
    """

    def __init__(self, tokenizer_path: str, max_length: int, keep: list[str]):
        self.tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.keep = keep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pair = list(batch[TEXT_PAIR]) if TEXT_PAIR in batch else None
        enc = load_tokenizer(self.tokenizer_path)(list(batch[TEXT]), pair, truncation=True, max_length=self.max_length,
                             return_attention_mask=False)
        out = {k: batch[k] for k in self.keep if k in batch}
        out["input_ids"] = _ragged(enc["input_ids"], np.int32)
        if "token_type_ids" in enc and pair is not None:
            out["token_type_ids"] = _ragged(enc["token_type_ids"], np.int8)
        return out


def _ragged(rows: list[list[int]], dtype) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = [np.asarray(r, dtype=dtype) for r in rows]
    return out


def pad_batch(batch: dict[str, np.ndarray], pad_token_id: int) -> dict[str, np.ndarray]:
    """Pad ragged token columns to the longest row of this batch (dynamic padding).

    Written here rather than `tokenizer.pad` because the rows arrive as numpy arrays and a
    per-row list conversion would dominate the step time on CPU.
    """
    if FEATURES in batch:  # tabular rows: nothing to pad
        return {FEATURES: np.asarray(batch[FEATURES], dtype=np.float32)}
    ids = batch["input_ids"]
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(ids) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]  # [B, T]
    out = {"input_ids": np.full((len(ids), width), pad_token_id, dtype=np.int64),
           "attention_mask": mask.astype(np.int64)}
    out["input_ids"][mask] = np.concatenate(list(ids)) if len(ids) else []
    if "token_type_ids" in batch:
        out["token_type_ids"] = np.zeros((len(ids), width), dtype=np.int64)
        out["token_type_ids"][mask] = np.concatenate(list(batch["token_type_ids"]))
    return out


#: Batches sorted together by length_buckets: wide enough to group lengths, small enough to
#: keep batch order random.
BUCKET_WINDOW_BATCHES = 8


def length_buckets(windows, batch_size: int, seed: int):
    """Split each window (a numpy batch of several batches' rows) into batches of similar length.

    Rows are sorted by token count inside the window, cut into `batch_size` batches, and those
    batches are yielded in a random order, so each batch pads to a near-equal length.
    """
    rng = np.random.default_rng(seed)
    for window in windows:
        order = np.argsort([len(r) for r in window["input_ids"]], kind="stable")
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for j in rng.permutation(len(chunks)):
            yield {k: v[chunks[j]] for k, v in window.items()}


@dataclass
class SplitStats:
    num_rows: int = 0
    num_empty_text: int = 0
    positives: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"num_rows": self.num_rows, "num_empty_text": self.num_empty_text,
                "positives": self.positives}


@dataclass
class Prepared:
    train: ray.data.Dataset
    validation: ray.data.Dataset
    label_space: LabelSpace
    train_stats: SplitStats
    validation_stats: SplitStats

    def pos_weight(self, max_value: float) -> list[float]:
        pos = np.asarray(self.train_stats.positives, dtype=np.float64)
        neg = self.train_stats.num_rows - pos
        return np.clip(neg / np.maximum(pos, 1.0), 1.0 / max_value, max_value).tolist()


def read_labelled(paths, cfg: DataConfig, label_space: LabelSpace,
                  labels_path: str | None = None, labels_table: pa.Table | None = None,
                  skip_unlabelled: bool = False) -> ray.data.Dataset:
    """Normalized labelled rows; `skip_unlabelled` drops rows whose id is not in the labels
    table (used after `drop_unscored`) instead of raising."""
    if labels_table is None and labels_path:
        labels_table = read_label_table(labels_path, cfg)
    string_cols = [cfg.text_column, *filter(None, [cfg.text_pair_column, cfg.label_list_column]),
                   *cfg.id_columns]
    ds = read_table(paths, cfg, string_cols)
    return ds.map_batches(Normalize(cfg, label_space, labels_table, skip_unlabelled=skip_unlabelled),
                          batch_format="pyarrow")


def drop_unscored(table: pa.Table, names) -> tuple[pa.Table, int]:
    """Labels-table rows with -1 in any label column (Jigsaw's test_labels: "not used for
    scoring") removed; returns (kept rows, number removed)."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"labels file: missing label column(s) {missing}")
    unscored = np.zeros(table.num_rows, bool)
    for name in names:
        unscored |= table.column(name).to_numpy(zero_copy_only=False) == -1
    return table.filter(pa.array(~unscored)), int(unscored.sum())


def read_unlabelled(paths, cfg: DataConfig, passthrough: list[str] | None = None) -> ray.data.Dataset:
    string_cols = [cfg.text_column, *filter(None, [cfg.text_pair_column]), *cfg.id_columns]
    ds = read_table(paths, cfg, string_cols)
    return ds.map_batches(Normalize(cfg, None, None, passthrough), batch_format="pyarrow")


def _collect(ds: ray.data.Dataset, columns: list[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {c: [] for c in columns}
    for batch in ds.select_columns(columns).iter_batches(batch_size=8192, batch_format="numpy"):
        for c in columns:
            parts[c].append(batch[c])
    return {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}


def _stats(keys_mask: np.ndarray, labels: np.ndarray, empty: np.ndarray) -> SplitStats:
    kept = keys_mask & ~empty
    return SplitStats(int(kept.sum()), int((keys_mask & empty).sum()),
                      labels[kept].sum(axis=0).astype(float).tolist())


class _KeepKeys:
    def __init__(self, keys: set[str], keep: bool):
        self.keys, self.keep = keys, keep

    def __call__(self, batch: pa.Table) -> pa.Table:
        inside = np.fromiter((k in self.keys for k in batch.column(KEY).to_pylist()), bool,
                             count=len(batch))
        return batch.filter(pa.array(inside if self.keep else ~inside))


def _drop_empty(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.invert(batch.column("_empty")))


def stratified_split(keys: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                     fold: tuple[int, int] | None = None) -> set[str]:
    """Validation keys from an iterative multilabel-stratified split over unique keys.

    With `fold=(i, k)` the validation part is fold i of a k-fold split (MultilabelStratifiedKFold,
    seeded, so every fold run of one job sees the same partition) and `fraction` is unused.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

    unique, first = np.unique(keys, return_index=True)
    x = np.zeros(len(unique))
    # Multi-category labels stratify on "not the first category" (the splitter wants 0/1).
    if fold is None:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction,
                                                    random_state=seed)
        _, val_idx = next(splitter.split(x, (labels[first] > 0).astype(int)))
    else:
        index, num_folds = fold
        if not 0 <= index < num_folds:
            raise ValueError(f"fold {index} is not in 0..{num_folds - 1}")
        splits = MultilabelStratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        _, val_idx = list(splits.split(x, (labels[first] > 0).astype(int)))[index]
    return set(unique[val_idx].tolist())


def prepare(cfg: DataConfig, seed: int, fold: tuple[int, int] | None = None) -> Prepared:
    try:
        return _prepare(cfg, seed, fold)
    except Exception as exc:
        err = as_data_error(exc)
        if err is None or err is exc:
            raise
        raise err from None


def _prepare(cfg: DataConfig, seed: int, fold: tuple[int, int] | None = None) -> Prepared:
    """Lazy train/validation datasets plus the label space and the statistics training needs.

    One streaming pass collects keys and labels only (never texts) to count rows and empty
    texts, compute positives per label, and make the stratified split when no validation set
    is given.
    """
    if cfg.train is None:
        raise DataError("data.train is not set")
    labels_table = read_label_table(cfg.train_labels, cfg) if cfg.train_labels else None
    space = label_space_for(cfg, labels_table)
    train = read_labelled(cfg.train, cfg, space, cfg.train_labels)
    seen = _collect(train, [KEY, LABELS, "_empty"])
    log.info("read %d training rows", len(seen[KEY]))
    if cfg.validation is None:
        val_keys = stratified_split(seen[KEY], seen[LABELS], cfg.validation_fraction, seed, fold)
        in_val = np.fromiter((k in val_keys for k in seen[KEY]), bool, count=len(seen[KEY]))
        validation = train.map_batches(_KeepKeys(val_keys, True), batch_format="pyarrow")
        train = train.map_batches(_KeepKeys(val_keys, False), batch_format="pyarrow")
        train_stats = _stats(~in_val, seen[LABELS], seen["_empty"])
        val_stats = _stats(in_val, seen[LABELS], seen["_empty"])
    else:
        if fold is not None:
            raise DataError("cross-validation folds split data.train; unset data.validation")
        validation = read_labelled(cfg.validation, cfg, space, cfg.validation_labels)
        vseen = _collect(validation, [LABELS, "_empty"])
        train_stats = _stats(np.ones(len(seen[KEY]), bool), seen[LABELS], seen["_empty"])
        val_stats = _stats(np.ones(len(vseen[LABELS]), bool), vseen[LABELS], vseen["_empty"])
    for name, st in (("train", train_stats), ("validation", val_stats)):
        if st.num_empty_text:
            log.warning("%s: %d rows with a null or empty text were left out", name,
                        st.num_empty_text)
        if st.num_rows == 0:
            raise DataError(f"{name} split has no rows with text")
    return Prepared(train.map_batches(_drop_empty, batch_format="pyarrow"),
                    validation.map_batches(_drop_empty, batch_format="pyarrow"),
                    space, train_stats, val_stats)


def tokenize(ds: ray.data.Dataset, tokenizer_path: str, max_length: int,
             keep: list[str]) -> ray.data.Dataset:
    return ds.map_batches(Tokenize(tokenizer_path, max_length, keep), batch_format="numpy",
                          batch_size=256)


def encode(ds: ray.data.Dataset, cfg: DataConfig, tokenizer_path: str | None, max_length: int,
           keep: list[str]) -> ray.data.Dataset:
    """Model inputs: token ids (ragged, via the tokenizer) or, for tabular data, the features."""
    if cfg.feature_columns:
        return ds.select_columns([*keep, FEATURES])
    return tokenize(ds, tokenizer_path, max_length, keep)


def object_store_fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)
