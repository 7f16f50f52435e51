"""Label layouts and row validation: a labels file, label columns (0/1 or categories) or a label list,
normalized by the `Normalize` UDF with stable row keys. Not file formats (read.py) or splits (split.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from mlc_dist.config import DataConfig
from mlc_dist.data.strings import as_string
from mlc_dist.data.textspec import input_columns
from mlc_dist.data.read import (FEATURES, KEY, LABELS, LINE, PATH, READ_ERROR, TEXT, TEXT_PAIR,
                                DataError, read_table)
from mlc_dist.labels import LabelSpace


READER = (PATH, LINE, READ_ERROR)  # columns the reader adds, never the user's


def read_label_table(path: str, cfg: DataConfig) -> pa.Table:
    """A separate labels table (ids + 0/1 columns), read whole: it holds no text, only bits."""
    refs = read_table(path, cfg, string_columns=cfg.id_columns, compose_text=False).to_arrow_refs()
    table = pa.concat_tables(ray.get(refs)) if refs else None
    if table is None or table.num_rows == 0:
        raise DataError(f"{path}: labels file is empty")
    missing = [c for c in cfg.id_columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing id column(s) {missing}; columns are {table.column_names}")
    _refuse_unreadable_rows(table)
    return table.drop_columns([c for c in READER if c in table.column_names])


def label_space_for(cfg: DataConfig, labels_table: pa.Table | None = None) -> LabelSpace:
    space = _label_names(cfg, labels_table)
    unknown = sorted(set(cfg.label_categories) - set(space.names))
    if unknown:
        raise DataError(f"data.label_categories names {unknown}, which are not labels "
                        f"({list(space.names)[:10]}...)")
    return LabelSpace(space.names, {k: tuple(v) for k, v in cfg.label_categories.items()})


def _label_names(cfg: DataConfig, labels_table: pa.Table | None) -> LabelSpace:
    try:  # duplicate or blank names are the user's to fix: DataError (exit 2), not ValueError
        if cfg.label_names_file:
            return LabelSpace.from_file(cfg.label_names_file)
        if cfg.label_names:
            return LabelSpace.from_names(cfg.label_names)
    except ValueError as exc:
        raise DataError(str(exc) if cfg.label_names_file else f"data.label_names: {exc}") \
            from None
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


def _refuse_unreadable_rows(batch: pa.Table) -> None:
    """Training has no quarantine: a CSV/TSV/JSONL row that could not be read is an error."""
    if READ_ERROR not in batch.column_names:
        return
    bad = pc.not_equal(batch.column(READ_ERROR), "").to_numpy(zero_copy_only=False)
    if bad.any():
        i = int(np.argmax(bad))
        path = batch.column(PATH)[i].as_py() if PATH in batch.column_names else "<input>"
        raise DataError(f"{path}: line {batch.column(LINE)[i].as_py()}: "
                        f"{batch.column(READ_ERROR)[i].as_py().replace('_', ' ')} "
                        f"({int(bad.sum())} such row(s) in this batch)")


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
            keys = keys_of(labels_table, cfg.id_columns)
            matrix = wide_labels(labels_table, label_space, cfg, source="labels file")
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
                            f"columns are {[c for c in batch.column_names if c not in READER]}")
        _refuse_unreadable_rows(batch)
        if self.skip_unlabelled and self.labels_by_id is not None:
            keys = keys_of(batch, cfg.id_columns)
            batch = batch.filter(pa.array([k in self.labels_by_id for k in keys], pa.bool_()))
        out = {c: batch.column(c) for c in self.passthrough}
        if cfg.feature_columns:
            return self._tabular(batch, out)
        return self._text(batch, out)

    def _text(self, batch: pa.Table, out: dict) -> pa.Table:
        """Text[, text pair] columns as strings; null or blank texts flagged in `_empty`."""
        cfg = self.cfg
        text = self._string(batch, cfg.text_column)
        empty = pc.or_(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text.fill_null("")), ""))
        out[TEXT] = text.fill_null("")
        if cfg.text_pair_column:
            out[TEXT_PAIR] = self._string(batch, cfg.text_pair_column).fill_null("")
        keys = keys_of(batch, cfg.id_columns, cfg.text_column, cfg.text_pair_column)
        return self._finish(batch, out, empty, keys)

    def _string(self, batch: pa.Table, name: str) -> pa.Array:
        """A text column of any string-like type as `string`; bytes that are not UTF-8 are an
        error naming the row (scoring quarantines them instead)."""
        normalised = as_string(batch.column(name))
        if normalised is None:
            return batch.column(name).cast(pa.string())
        text, invalid = normalised
        if invalid.any():
            raise DataError(f"{_row_ref(batch, int(np.argmax(invalid)), self.cfg.id_columns)}: "
                            f"column {name!r} is not valid UTF-8")
        return text

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
        keys = (keys_of(batch, cfg.id_columns) if cfg.id_columns else
                [hashlib.blake2b(r.tobytes(), digest_size=12).hexdigest() for r in matrix])
        return self._finish(batch, out, pa.array(np.zeros(len(batch), bool)), keys)

    def _finish(self, batch: pa.Table, out: dict, empty, keys: list[str]) -> pa.Table:
        """The columns every layout ends with: _empty, _key[, labels] and the source path."""
        out["_empty"] = empty
        out[KEY] = pa.array(keys)
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
        return wide_labels(batch, space, cfg)


def wide_labels(batch: pa.Table, space: LabelSpace, cfg: DataConfig,
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


def keys_of(batch: pa.Table, id_columns: list[str], text_column: str | None = None,
            pair_column: str | None = None) -> list[str]:
    """A stable row key: the id columns when given, else a hash of the text (duplicates of one
    text then share a key and land on the same side of a split, which avoids leakage)."""
    if id_columns:
        cols = [_id_strings(batch.column(c)).fill_null("").to_pylist() for c in id_columns]
        return ["\x1f".join(vals) for vals in zip(*cols)]
    cols = [_id_strings(batch.column(c)).fill_null("").to_pylist()
            for c in (text_column, pair_column) if c]
    return [hashlib.blake2b("\x1f".join(v).encode(), digest_size=12).hexdigest() for v in zip(*cols)]


def _id_strings(col) -> pa.Array:
    normalised = as_string(col)  # dictionary / string_view / binary ids: the same key as a string
    return normalised[0] if normalised else col.cast(pa.string())


def _tensor_column(matrix: np.ndarray) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(matrix.astype(np.float32))


def read_labelled(paths, cfg: DataConfig, label_space: LabelSpace,
                  labels_path: str | None = None, labels_table: pa.Table | None = None,
                  skip_unlabelled: bool = False) -> ray.data.Dataset:
    """Normalized labelled rows; `skip_unlabelled` drops rows whose id is not in the labels
    table (used after `drop_unscored`) instead of raising."""
    if labels_table is None and labels_path:
        labels_table = read_label_table(labels_path, cfg)
    string_cols = [*input_columns(cfg), *filter(None, [cfg.text_pair_column,
                                                       cfg.label_list_column]), *cfg.id_columns]
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
    string_cols = [*input_columns(cfg), *filter(None, [cfg.text_pair_column]), *cfg.id_columns]
    ds = read_table(paths, cfg, string_cols)
    return ds.map_batches(Normalize(cfg, None, None, passthrough), batch_format="pyarrow")
