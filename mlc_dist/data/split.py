"""Train/validation split and the statistics training needs (row counts, empty texts, positives).

Owns `prepare`; reading, label layouts and tokenization are read.py's, labels.py's, tokenize.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from mlc_dist.config import DataConfig
from mlc_dist.data.labels import label_space_for, read_label_table, read_labelled
from mlc_dist.data.read import KEY, LABELS, DataError, as_data_error
from mlc_dist.labels import LabelSpace

log = logging.getLogger(__name__)


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
        train, validation, train_stats, val_stats = _split_train(train, seen, cfg, seed, fold)
    else:
        if fold is not None:
            raise DataError("cross-validation folds split data.train; unset data.validation")
        validation, val_stats = _read_validation(cfg, space)
        train_stats = _stats(np.ones(len(seen[KEY]), bool), seen[LABELS], seen["_empty"])
    _check_splits(train_stats, val_stats)
    return Prepared(train.map_batches(_drop_empty, batch_format="pyarrow"),
                    validation.map_batches(_drop_empty, batch_format="pyarrow"),
                    space, train_stats, val_stats)


def _split_train(train: ray.data.Dataset, seen: dict[str, np.ndarray], cfg: DataConfig, seed: int,
                 fold: tuple[int, int] | None):
    """(train, validation, train stats, validation stats) from a stratified split of data.train."""
    val_keys = stratified_split(seen[KEY], seen[LABELS], cfg.validation_fraction, seed, fold)
    in_val = np.fromiter((k in val_keys for k in seen[KEY]), bool, count=len(seen[KEY]))
    validation = train.map_batches(_KeepKeys(val_keys, True), batch_format="pyarrow")
    train = train.map_batches(_KeepKeys(val_keys, False), batch_format="pyarrow")
    return (train, validation, _stats(~in_val, seen[LABELS], seen["_empty"]),
            _stats(in_val, seen[LABELS], seen["_empty"]))


def _read_validation(cfg: DataConfig, space: LabelSpace) -> tuple[ray.data.Dataset, SplitStats]:
    """data.validation as given, with its statistics from one pass over labels only."""
    validation = read_labelled(cfg.validation, cfg, space, cfg.validation_labels)
    vseen = _collect(validation, [LABELS, "_empty"])
    return validation, _stats(np.ones(len(vseen[LABELS]), bool), vseen[LABELS], vseen["_empty"])


def _check_splits(train_stats: SplitStats, val_stats: SplitStats) -> None:
    """Warn about left-out empty texts; a split with no rows at all is an error."""
    for name, st in (("train", train_stats), ("validation", val_stats)):
        if st.num_empty_text:
            log.warning("%s: %d rows with a null or empty text were left out", name,
                        st.num_empty_text)
        if st.num_rows == 0:
            raise DataError(f"{name} split has no rows with text")
