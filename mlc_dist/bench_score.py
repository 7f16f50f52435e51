"""`mlc-dist bench score`: our scoring job vs `transformers.pipeline` vs a bare torch loop.

All three run on the same rows, the same exported model (the packaged MiniLM with a fresh
classifier head: throughput does not need a trained head) and the same device: on a machine with
a GPU, our job's actor and the two loops all run on it, in the precision `score.precision: auto`
picks, and the figures add MFU (forward FLOPs over the GPU's peak) and our fraction of the
forward ceiling (the bare loop). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import csv
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mlc_dist import bench_backends, bench_rounds
from mlc_dist.config import DEFAULT_MODEL, validate_job
from mlc_dist.data import textspec

DEV_TSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "goemotions",
                       "dev.tsv")
MAX_LENGTH = 128
FIXED_ROWS = 64  # a run this small is all fixed cost: worker start, imports, model load, plan


def read_texts(path: str, rows: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        texts = [r[0] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    if rows <= 0:
        return texts
    return [texts[i % len(texts)] for i in range(rows)]


def read_data(path: str, rows: int, meta) -> tuple[list[str], np.ndarray | None]:
    """The bench's texts, repeated to `rows` (0: the file once), and their labels [N, L] (0/1)
    when the file has them for every one of the export's labels, else None.

    A `.tsv` is GoEmotions-style (text, label ids "2,27", id: the default data). Any other file
    is a table in the export's own layout (CSV, Parquet, JSON Lines; the Jigsaw `train.csv` of
    `mlc-dist demo-data`): its text column, and label columns named as the labels."""
    from mlc_dist.config import JobConfigError
    from mlc_dist.scoring.parity import load_table

    if path.lower().endswith(".tsv"):
        return read_texts(path, rows), bench_backends.read_labels(path, rows,
                                                                  len(meta.label_space))
    table = load_table(path, "bench score --data-file")
    columns = textspec.input_columns(meta)
    if len(columns) != 1 or meta.text_pair_column or columns[0] not in table.column_names:
        raise JobConfigError(f"bench score --data-file: {path} needs the model's one text "
                             f"column {columns} (has {table.column_names}); the bench does not "
                             "build texts from several columns or pairs")
    column = columns[0]
    texts = ["" if t is None else str(t) for t in table.column(column).to_pylist()]
    names = meta.label_space.names
    labels = None
    if not meta.label_space.categories and all(n in table.column_names for n in names):
        labels = np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in names],
                          axis=1)
        bad = [n for j, n in enumerate(names) if not np.isin(labels[:, j], (0, 1)).all()]
        if bad:
            raise JobConfigError(f"bench score --data-file: {path}: label columns {bad} hold "
                                 "values other than 0/1 (Jigsaw's -1 for rows not scored?)")
        labels = labels.astype(np.int8)
    if rows > 0:
        index = np.arange(rows) % len(texts)
        texts = [texts[i] for i in index]
        labels = None if labels is None else labels[index]
    return texts, labels


def export_bench_model(directory: str, num_labels: int = 28) -> str:
    from transformers import AutoTokenizer

    from mlc_dist.artifacts import ModelMeta, save_export
    from mlc_dist.config import ModelConfig
    from mlc_dist.labels import LabelSpace
    from mlc_dist.models import build_model, resolve_model_path

    space = LabelSpace.from_names([f"label_{i}" for i in range(num_labels)])
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=DEFAULT_MODEL), space)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    save_export(directory, model, tokenizer,
                ModelMeta(space, [0.5] * num_labels, "text", None, MAX_LENGTH, DEFAULT_MODEL))
    return directory


class PeakRss:
    """Peak summed RSS of this process and all its descendants (the local Ray cluster); of this
    process alone with `children=False` (the driver)."""

    def __init__(self, every_s: float = 0.2, children: bool = True):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self.children = children
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *(me.children(recursive=True) if self.children else [])]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_ours(model_dir: str, input_path: str, output: str, batch_size: int | None,
             backend: str = "torch", parity_sample: str | None = None, use_gpu: bool = False):
    from mlc_dist import scoring

    job = validate_job({"run": {"name": "bench-score"}, "data": {"id_columns": ["id"]},
                        "scaling": {"use_gpu": use_gpu},
                        "score": {"input": input_path, "output": output, "model": model_dir,
                                  "batch_size": batch_size, "backend": backend,
                                  "parity_sample": parity_sample, "num_actors": 1}})
    started = time.perf_counter()
    summary = scoring.run(job, overwrite=True)
    seconds = time.perf_counter() - started
    table = scoring.read_scores(output)
    order = np.argsort(np.asarray(table.column("id").to_pylist(), dtype=np.int64))
    cols = [c for c in table.column_names if c.startswith("score_")]
    return seconds, np.stack([table.column(c).to_numpy() for c in cols], axis=1)[order], summary


def _dtype(device: str) -> torch.dtype:
    """What our scorer runs in on `device` (score.precision: auto), for the loops to match."""
    from mlc_dist.scoring.pipeline import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        resolve_precision("auto", torch.device(device))]


def run_pipeline(model_dir: str, texts: list[str], batch_size: int, device: str = "cpu"):
    """What a user would write: the text-classification pipeline, all labels, sigmoid."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model_dir, top_k=None,
                    function_to_apply="sigmoid", device=device, dtype=_dtype(device))
    names = list(pipe.model.config.id2label.values())
    started = time.perf_counter()
    results = pipe(texts, batch_size=batch_size, truncation=True, max_length=MAX_LENGTH)
    seconds = time.perf_counter() - started
    scores = np.array([[{d["label"]: d["score"] for d in r}[n] for n in names] for r in results])
    return seconds, scores


@torch.inference_mode()
def run_bare(model_dir: str, texts: list[str], batch_size: int, device: str = "cpu"):
    """The ceiling: one process, length-sorted batches, inference_mode, no Ray; on a GPU the
    model cast once to our scorer's dtype, widths padded to 16, results kept on the device."""
    from mlc_dist.artifacts import load_export

    model, tokenizer, _ = load_export(model_dir)
    model.to(device, _dtype(device))
    started = time.perf_counter()
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    order = np.argsort([len(e) for e in enc], kind="stable")
    parts = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt",
                              pad_to_multiple_of=16 if device != "cpu" else None)
        parts.append(torch.sigmoid(model(**{k: v.to(device) for k, v in batch.items()})
                                   .logits.float()))
    scores = np.zeros((len(texts), model.config.num_labels), np.float32)
    if parts:
        scores[order] = torch.cat(parts).cpu().numpy()
    return time.perf_counter() - started, scores


def token_count(model_dir: str, texts: list[str]) -> int:
    """Real (unpadded) tokens of `texts` as scored: the FLOPs MFU counts."""
    from mlc_dist.data import load_tokenizer

    enc = load_tokenizer(model_dir)(texts, truncation=True, max_length=MAX_LENGTH)
    return sum(len(e) for e in enc["input_ids"])


def efficiency(gpu: str | None, flops_per_token: float | None, tokens: int,
               seconds: dict[str, float | None]) -> dict:
    """`<name>_mfu` for each timed path (None on CPU or without a timing) and the GPU's name
    and peak, so the keys are the same on every device."""
    from mlc_dist.scale import peak_tflops, utilisation

    out: dict = {"gpu": gpu, "peak_tflops": peak_tflops(gpu)}
    for name, s in seconds.items():
        rate = tokens / s if s else None
        mfu = utilisation(flops_per_token, rate, gpu) if flops_per_token else None
        out[f"{name}_mfu"] = None if mfu is None else round(mfu, 4)
    return out


def _write_input(folder: str, texts: list[str], text_columns: list[str], files: int = 1) -> str:
    """`texts` with string ids 0..n-1, as `files` Parquet files of near-equal size in `folder`
    (each of the model's text columns holding the text)."""
    os.makedirs(folder, exist_ok=True)
    table = pa.table({"id": [str(i) for i in range(len(texts))],
                      **{c: texts for c in text_columns}})
    bounds = np.linspace(0, len(texts), max(1, files) + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(lo, hi - lo), os.path.join(folder, f"rows-{i:04d}.parquet"))
    return folder


def _write_sample(path: str, texts: list[str], labels: np.ndarray | None, meta,
                  rows: int = 2000) -> str:
    """The int8 parity sample: the first rows, with their labels when the data has them."""
    columns = {c: texts[:rows] for c in textspec.input_columns(meta)}
    if labels is not None:
        columns.update({n: labels[:rows, j] for j, n in enumerate(meta.label_space.names)})
    pq.write_table(pa.table(columns), path)
    return path


def run_bench(rows: int = 20000, batch_size: int | None = None, compare: bool = True,
              data_file: str | None = None, model_dir: str | None = None,
              files: int = 1, backend: str = "torch", use_gpu: bool | None = None,
              repeats: int = bench_rounds.DEFAULT_REPEATS, pipeline: bool = True) -> dict:
    """`repeats` rounds, each: ours end to end on `backend` (Ray start excluded; workers,
    imports and model load included; ONNX graphs made beforehand, once per export), then the
    same job on FIXED_ROWS rows for its fixed cost, then the pipeline and the bare loops with
    Ray shut down, so they have the machine to themselves. Figures: medians over the rounds,
    with their spread (bench_rounds). `use_gpu` (default: a GPU is visible; never for the
    ONNX backends, CPU only): all three on the GPU; `batch_size` unset: by device (64 CPU,
    256 GPU). `pipeline=False` leaves out the transformers pipeline (the slowest side; the
    ratios against the bare loops stay)."""
    from mlc_dist.artifacts import read_meta
    from mlc_dist.scoring import onnx_backend
    from mlc_dist.scoring.pipeline import default_batch_size

    if use_gpu is None:
        use_gpu = torch.cuda.is_available() and backend == "torch"
    device = "cuda" if use_gpu else "cpu"
    batch_size = batch_size or default_batch_size(torch.device(device))
    data_file = data_file or os.path.abspath(DEV_TSV)
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        model_dir = model_dir or export_bench_model(os.path.join(tmp, "model"))
        meta = read_meta(model_dir)
        texts, labels = read_data(data_file, rows, meta)
        columns = textspec.input_columns(meta)
        paths = {"input": _write_input(os.path.join(tmp, "input"), texts, columns, files),
                 "small": _write_input(os.path.join(tmp, "small"), texts[:FIXED_ROWS], columns),
                 "sample": _write_sample(os.path.join(tmp, "parity.parquet"), texts, labels,
                                         meta),
                 "tmp": tmp}
        if meta.text_template:  # the loops compared get the text scoring builds from the columns
            texts = textspec.compose_rows(meta.text_template,
                                          [dict.fromkeys(columns, t) for t in texts])
        onnx_backend.export_graphs(model_dir)  # once per export, not part of a scoring run
        setup = dict(model_dir=model_dir, texts=texts, labels=labels, paths=paths,
                     batch_size=batch_size, backend=backend, use_gpu=use_gpu, compare=compare,
                     pipeline=pipeline)
        result = bench_rounds.combine(bench_rounds.run_rounds(
            lambda i: _one_round(**setup, index=i), repeats))
    result.update(files=files, device=device)
    return result


def _one_round(model_dir: str, texts: list[str], labels, paths: dict, batch_size: int,
               backend: str, use_gpu: bool, compare: bool, pipeline: bool = True,
               index: int = 0) -> dict:
    """Every side once: ours (and its fixed cost) on a fresh local Ray cluster, then Ray shut
    down and the pipeline, the bare loop and the backends' bare loops.

    `peak_rss_mb` (ours: this process and the local cluster) only in the first round, or in
    every round without the comparison: the loops compared run in this process, and the memory
    they took stays with it, so a later round would count it as ours (`--backend onnx` at
    100,000 rows: 2.8 GB in round 1, 6.2 GB in rounds 2 and 3)."""
    import ray

    from mlc_dist.artifacts import read_meta
    from mlc_dist.runtime import init_ray
    from mlc_dist.scale import forward_flops_per_token, worker_gpu_name

    meta = read_meta(model_dir)
    init_ray(min_cpus=1, dashboard=False)  # as `mlc-dist score` starts it
    gpu = worker_gpu_name(use_gpu)  # what the scoring actor gets
    with PeakRss() as rss:
        ours_s, ours, summary = run_ours(model_dir, paths["input"],
                                         os.path.join(paths["tmp"], "out"), batch_size, backend,
                                         paths["sample"], use_gpu)
    # Run second, on workers the first run warmed: a low fixed cost, a conservative rate.
    fixed_s = run_ours(model_dir, paths["small"], os.path.join(paths["tmp"], "out-small"),
                       batch_size, backend, paths["sample"], use_gpu)[0]
    ray.shutdown()
    tokens = token_count(model_dir, texts)
    flops = forward_flops_per_token(meta.base_model, tokens / max(len(texts), 1)) \
        if gpu else None
    steady = (len(texts) - FIXED_ROWS) / max(ours_s - fixed_s, 1e-9)
    result = {"rows": len(texts), "model": model_dir,
              "ours_rows_per_s": round(len(texts) / ours_s, 1),
              "ours_fixed_s": round(fixed_s, 1), "ours_steady_rows_per_s": round(steady, 1),
              "rows_quarantined": summary["rows_quarantined"], "batch_size": batch_size,
              "tokens": tokens}
    if index == 0 or not compare:
        result["peak_rss_mb"] = round(rss.peak / 2**20)
    pipe_s = bare_s = None
    if compare:
        device = "cuda" if use_gpu else "cpu"
        bare_s, bare = run_bare(model_dir, texts, batch_size, device)
        result.update({
            "bare_rows_per_s": round(len(texts) / bare_s, 1),
            "fraction_of_bare": round(bare_s / ours_s, 3),
            "steady_fraction_of_bare": round(steady * bare_s / len(texts), 3),
            "max_abs_diff": float(np.abs(ours - bare).max()),
            # The forward ceiling on this device: the bare loop (same model, dtype, rows).
            "fraction_of_forward_ceiling": round(steady * bare_s / len(texts), 3),
        })
        if pipeline:
            pipe_s, pipe = run_pipeline(model_dir, texts, batch_size, device)
            result.update({
                "pipeline_rows_per_s": round(len(texts) / pipe_s, 1),
                "ratio_vs_pipeline": round(pipe_s / ours_s, 3),
                "steady_ratio_vs_pipeline": round(steady * pipe_s / len(texts), 3),
                "max_abs_diff": float(max(result["max_abs_diff"], np.abs(ours - pipe).max())),
            })
        result.update(bench_backends.backend_figures(model_dir, texts, batch_size, labels,
                                                     bare_s, bare, backend, ours_s, ours))
    # ours_steady: at the steady rate (fixed cost left out), as if over all the rows.
    result.update(efficiency(gpu, flops, tokens, {
        "ours": ours_s, "ours_steady": len(texts) / steady if steady > 0 else None,
        "pipeline": pipe_s, "bare": bare_s}))
    result.setdefault("fraction_of_forward_ceiling", None)
    return result
