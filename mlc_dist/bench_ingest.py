"""`mlc-dist bench ingest`: training's input path at corpus scale.

A generated Jigsaw-layout corpus (written once, cached) read -> validated -> tokenized by Ray
Data as training does it, against one process calling the same tokenizer; the driver's memory
at two corpus sizes; and the fraction of step time a short training run waits on its data.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlc_dist import runtime, storage
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


def ingest_job(train: str, validation: str, output_dir: str, train_steps: int):
    """The job training would run on the corpus: the Jigsaw columns, the default model at
    max_length 128, one worker (on a GPU when one is visible), `train_steps` steps, no
    evaluation but the run's last one (on the small validation set)."""
    import torch

    from mlc_dist.config import validate_job

    return validate_job({
        "run": {"name": "bench-ingest", "output_dir": output_dir},
        "data": {"train": train, "validation": validation, "text_column": "comment_text",
                 "id_columns": ["id"], "label_columns": list(JIGSAW_LABELS),
                 "max_length": MAX_LENGTH},
        "train": {"epochs": 1, "max_steps": max(train_steps, 1), "eval_every_steps": None,
                  "checkpoint_every_steps": None, "pos_weight": False},
        "scaling": {"num_workers": 1, "use_gpu": torch.cuda.is_available()}}, "bench-ingest")


def ray_ingest(job, tokenizer_path: str) -> tuple[int, float, int, int | None]:
    """(rows, seconds, the driver's peak RSS in bytes, tokenize tasks) for Ray Data reading,
    validating (Normalize) and tokenizing data.train as training's datasets do
    (data.read_labelled, then data.encode), every block pulled through the driver's iterator as
    it streams. Tokenize tasks: how many Ray Data ran (from its stats), at most the cores that
    tokenized at once; one task per read block, and Ray's Parquet reader sizes those."""
    from mlc_dist import data

    cfg = job.data
    ds = data.encode(data.read_labelled(cfg.train, cfg, data.label_space_for(cfg)), cfg,
                     tokenizer_path, cfg.max_length, keep=[data.LABELS])
    rows = 0
    with PeakRss(every_s=0.1, children=False) as rss:
        started = time.perf_counter()
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += block.num_rows
        seconds = time.perf_counter() - started
    match = re.search(r"MapBatches\(Tokenize\): (\d+) tasks executed", ds.stats())
    return rows, seconds, rss.peak, int(match.group(1)) if match else None


@contextmanager
def _one_thread_tokenizers():
    """The fast tokenizer's batch calls on this thread only (its Rust side reads the variable
    at each call), restored afterwards."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def single_process(folder: str, tokenizer_path: str) -> tuple[int, float]:
    """(rows, seconds): the same tokenizer call as data.Tokenize on the corpus's texts, in this
    process on one core, SINGLE_BATCH texts a call; the texts read beforehand, not timed."""
    from mlc_dist.data import load_tokenizer

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    texts = pq.read_table(files, columns=["comment_text"]).column("comment_text").to_pylist()
    tokenizer = load_tokenizer(tokenizer_path)
    with _one_thread_tokenizers():
        started = time.perf_counter()
        for start in range(0, len(texts), SINGLE_BATCH):
            tokenizer(texts[start:start + SINGLE_BATCH], None, truncation=True,
                      max_length=MAX_LENGTH, return_attention_mask=False)
        seconds = time.perf_counter() - started
    return len(texts), seconds


def train_wait(job) -> dict:
    """A short fit() on the corpus: its data_wait_fraction(_max) and steady samples/s."""
    from mlc_dist.train import fit

    summary = fit(job)
    return {"data_wait_fraction": summary["data_wait_fraction"],
            "data_wait_fraction_max": summary["data_wait_fraction_max"],
            "train_steady_samples_per_s": summary["steady_samples_per_s"],
            "train_batch_size": job.train.batch_size_per_worker}


def run_bench(rows: int = 1_000_000, files: int = 8, train_steps: int = 30) -> dict:
    """Generate (or reuse) the corpus and a 10% one (its prefix), then on a local Ray cluster
    sized as training's: Ray Data ingest of the small corpus (which also starts Ray Data's
    workers), of the full one, and `train_steps` of training (0: none); then, Ray shut down,
    the single-process tokenizer on the full corpus's texts.

    ratio_vs_cores_x_single: Ray Data's rows/s over `cores` single processes' (1.0: every core
    tokenizes as fast as one process alone, with read and validation for free).
    driver_peak_rss_mb(_small): this process only, while it pulls each corpus through; equal
    figures mean the driver holds no more for 10x the rows.
    """
    import ray

    from mlc_dist.models import resolve_model_path

    pool, recipe = text_pool()
    folder, gen_s = write_corpus(rows, files, pool, recipe)
    small, gen_small_s = write_corpus(rows // 10, files, pool, recipe)
    validation, _ = write_corpus(VALIDATION_ROWS, 1, pool, recipe, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        job = ingest_job(folder, validation, tmp, train_steps)
        tokenizer_path = resolve_model_path(job.model.name)
        runtime.init_ray(min_cpus=job.scaling.num_workers * job.scaling.cpus_per_worker)
        small_job = job.model_copy(update={"data": job.data.model_copy(update={"train": small})})
        rows_small, small_s, rss_small, _ = ray_ingest(small_job, tokenizer_path)
        rows_seen, ray_s, rss, tasks = ray_ingest(job, tokenizer_path)
        waits = train_wait(job) if train_steps > 0 else {
            "data_wait_fraction": None, "data_wait_fraction_max": None}
        ray.shutdown()
    single_rows, single_s = single_process(folder, tokenizer_path)
    assert rows_seen == rows and rows_small == rows // 10 and single_rows == rows, \
        (rows_seen, rows_small, single_rows)
    cores = runtime.usable_cores()
    ray_rate, single_rate = rows / ray_s, rows / single_s
    return {
        "rows": rows, "files": files, "cores": cores,
        "ray_rows_per_s": round(ray_rate, 1),
        "single_process_rows_per_s": round(single_rate, 1),
        "ratio_vs_cores_x_single": round(ray_rate / (cores * single_rate), 3),
        "ray_tokenize_tasks": tasks,
        "driver_peak_rss_mb": round(rss / 2**20),
        "rows_small": rows // 10,
        "ray_rows_per_s_small": round(rows_small / small_s, 1),
        "driver_peak_rss_mb_small": round(rss_small / 2**20),
        **{k: v if not isinstance(v, float) else round(v, 4) for k, v in waits.items()},
        "train_steps": train_steps,
        # Not part of any figure above; None when this run reused the cached corpus.
        "generate_s": None if gen_s is None else round(gen_s, 1),
        "generate_small_s": None if gen_small_s is None else round(gen_small_s, 1),
        "corpus": folder, "model": job.model.name, "max_length": MAX_LENGTH,
    }
