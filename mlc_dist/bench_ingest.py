"""`mlc-dist bench ingest`: training's input path at corpus scale.

A generated Jigsaw-layout corpus (written once, cached) read -> validated -> tokenized by Ray
Data as training does it, against one process calling the same tokenizer; the driver's memory
at two corpus sizes; and the fraction of step time a short training run waits on its data.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlc_dist import storage
from mlc_dist.bench_score import DEV_TSV, MAX_LENGTH, PeakRss, read_texts
from mlc_dist.demo import JIGSAW_LABELS

__all__ = ["JIGSAW_LABELS", "write_corpus", "text_pool", "run_bench"]

#: Jigsaw's label rates (its train set: toxic 9.6%, obscene 5.3%, insult 4.9%, ...).
LABEL_RATES = (0.096, 0.010, 0.053, 0.003, 0.049, 0.009)
RECIPE_VERSION = 1  # bump when the rows a recipe makes change: the cache key changes with it
SINGLE_BATCH = 1000  # texts per tokenizer call in the single-process ceiling
VALIDATION_ROWS = 256  # the training run's validation set (a separate seed)


def text_pool(path: str = DEV_TSV) -> tuple[list[str], str]:
    """The texts rows are drawn from and the recipe's name: the GoEmotions dev texts when
    present, else 5,000 of the demo corpus's generated comments (synthetic words)."""
    if os.path.exists(path):
        return read_texts(path, 0), "goemotions-dev"
    from mlc_dist.demo import generate

    return generate(5000, seed=0).column("comment_text").to_pylist(), "synthetic"


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash of each value (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def generate_rows(lo: int, hi: int, pool: list[str], seed: int = 0) -> pa.Table:
    """Rows [lo, hi): each a function of its index and `seed` only, so any file split of the
    same rows holds the same rows, and a smaller corpus is a prefix of a larger one."""
    index = np.arange(lo, hi, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(index + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        columns = {"id": pa.array([f"{i:09d}" for i in range(lo, hi)]),
                   "comment_text": pa.array([pool[j] for j in (h % np.uint64(len(pool)))
                                             .astype(np.int64)])}
        for k, (name, rate) in enumerate(zip(JIGSAW_LABELS, LABEL_RATES)):
            uniform = (_mix(h + np.uint64(k + 1)) >> np.uint64(11)) / float(2 ** 53)
            columns[name] = pa.array((uniform < rate).astype(np.int64))
    return pa.table(columns)


def write_corpus(rows: int, files: int, pool: list[str], recipe: str, seed: int = 0,
                 root: str | None = None) -> tuple[str, float | None]:
    """The corpus folder (`files` Parquet files of near-equal size) and the seconds spent
    writing it; None when an earlier run wrote it (the folder is keyed by rows, files, recipe
    and seed, and appears whole: written under a temporary name, then renamed)."""
    parent = os.path.join(root or storage.cache_root(), "bench-ingest")
    name = f"{recipe}-v{RECIPE_VERSION}-seed{seed}-{rows}rows-{files}files"
    folder = os.path.join(parent, name)
    if os.path.isdir(folder):
        return folder, None
    started = time.perf_counter()
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    bounds = np.linspace(0, rows, max(1, files) + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(generate_rows(int(lo), int(hi), pool, seed),
                       os.path.join(tmp, f"part-{i:05d}.parquet"))
    try:
        os.rename(tmp, folder)
    except OSError:  # another run wrote it meanwhile: theirs is the same rows
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(folder):
            raise
    return folder, time.perf_counter() - started
