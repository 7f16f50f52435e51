"""The int8 parity gate: before anything is scored with score.backend onnx-int8, the int8 graph's
scores on a sample (score.parity_sample) are compared with torch fp32 per label, and the backend
is refused if any label's AUC drops by more than MAX_AUC_DROP or more than MAX_FLIP_RATE of its
thresholded decisions flip. Owns the comparison and the figures, and which backend a job
scores with (score.backend: auto); not the manifest (commit.py).
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from mlc_dist import data, storage
from mlc_dist.config import SCORE_BATCH_CPU, JobConfig, JobConfigError
from mlc_dist.data import textspec
from mlc_dist.models.outputs import PRED_PREFIX, SCORE_PREFIX, OutputSchema

log = logging.getLogger(__name__)

MAX_AUC_DROP = 0.002
MAX_FLIP_RATE = 0.005


class ParityError(JobConfigError):
    """The int8 graph disagrees with fp32 beyond the limits; the message names the figures."""


def load_table(path: str, what: str = "score.parity_sample"):
    """A whole small CSV (`.csv`), TSV (`.tsv`), JSON Lines (`.jsonl`/`.json`) or Parquet file,
    local or in an object store, read at once into memory (data.read_table is the lazy, streaming
    reader for corpora); `what` names the setting in the not-found error."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if not storage.is_file(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    fs, inner = storage.filesystem(path)
    ext = os.path.splitext(path)[1].lower()
    with fs.open_input_file(inner) as f:
        if ext in (".csv", ".tsv"):
            return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(
                delimiter="\t" if ext == ".tsv" else ","))
        if ext in (".jsonl", ".json"):
            return pajson.read_json(f)
        return pq.read_table(f)


def read_sample(path: str, model_dir: str, meta) -> tuple[dict, dict[str, np.ndarray]]:
    """(a Scorer input batch, {label: true values} for the label columns the file has).

    The file needs the model's input columns (its text column(s), or its feature columns);
    label columns named as the labels are optional: 0/1, or a category (name or index)."""
    table = load_table(path)
    needed = meta.feature_columns or [*textspec.input_columns(meta),
                                      *filter(None, [meta.text_pair_column])]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise JobConfigError(f"score.parity_sample: {path} lacks the model's input columns "
                             f"{missing} (has {table.column_names})")
    if meta.feature_columns:
        batch = {data.FEATURES: np.stack([table.column(c).to_numpy(zero_copy_only=False)
                                          for c in needed], axis=1).astype(np.float32)}
    else:
        text = (textspec.compose(table, meta.text_template).to_pylist() if meta.text_template
                else table.column(meta.text_column).to_pylist())
        texts = {data.TEXT: np.asarray(["" if t is None else t for t in text], dtype=object)}
        if meta.text_pair_column:
            texts[data.TEXT_PAIR] = np.asarray(table.column(needed[-1]).to_pylist(), dtype=object)
        batch = data.Tokenize(model_dir, meta.max_length, keep=[])(texts)
    labels = {}
    for name in meta.label_space.names:
        if name in table.column_names:
            values = table.column(name).to_pylist()
            cats = meta.label_space.categories.get(name)
            labels[name] = np.asarray([cats.index(v) if isinstance(v, str) else int(v)
                                       for v in values])
    return batch, labels


def _auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else None


def _auc_drop(name: str, schema: OutputSchema, ref: dict, got: dict, y) -> dict:
    """AUC of fp32 and int8 scores against `y` ([N] true values, or fp32's decisions); for a
    multi-category label, one-vs-rest per category, and the largest drop."""
    cats = schema.label_space.categories.get(name) if not schema.is_binary else None
    columns = ([(f"{SCORE_PREFIX}{name}_{c}", y == k) for k, c in enumerate(cats)] if cats
               else [(f"{SCORE_PREFIX}{name}", y > 0)])
    drops = []
    for column, positive in columns:
        fp32, int8 = _auc(positive, ref[column]), _auc(positive, got[column])
        if fp32 is not None:
            drops.append((fp32 - int8, fp32, int8))
    if not drops:
        return {"auc_fp32": None, "auc_int8": None, "auc_drop": None}
    drop, fp32, int8 = max(drops)
    return {"auc_fp32": round(fp32, 6), "auc_int8": round(int8, 6), "auc_drop": round(drop, 6)}


def compare(schema: OutputSchema, ref: dict, got: dict, labels: dict[str, np.ndarray]) -> dict:
    """Per-label and worst-case figures of int8 (`got`) vs fp32 (`ref`) Scorer outputs."""
    scores = [c for c in ref if c.startswith(SCORE_PREFIX)]
    per_label, flips = {}, 0
    for name in schema.names:
        flipped = ref[f"{PRED_PREFIX}{name}"] != got[f"{PRED_PREFIX}{name}"]
        flips += int(flipped.sum())
        y = labels.get(name, ref[f"{PRED_PREFIX}{name}"])  # no labels: fp32's own decisions
        per_label[name] = {"flip_rate": round(float(flipped.mean()), 6),
                           **_auc_drop(name, schema, ref, got, np.asarray(y))}
    num_rows = len(ref[scores[0]])
    drops = [f["auc_drop"] for f in per_label.values() if f["auc_drop"] is not None]
    figures = {
        "rows": num_rows, "auc_against": "labels" if labels else "fp32 decisions",
        "max_abs_diff_vs_fp32": float(max(np.abs(ref[c] - got[c]).max() for c in scores)),
        "decision_flip_rate": round(flips / max(1, num_rows * len(schema.names)), 6),
        "max_label_flip_rate": max(f["flip_rate"] for f in per_label.values()),
        "max_auc_drop": max(drops) if drops else None,
        "limits": {"max_auc_drop": MAX_AUC_DROP, "max_label_flip_rate": MAX_FLIP_RATE},
        "per_label": per_label}
    figures["passed"] = bool(figures["max_label_flip_rate"] <= MAX_FLIP_RATE and
                             (figures["max_auc_drop"] or 0.0) <= MAX_AUC_DROP)
    return figures


def check_int8(model_dir: str, sample_path: str, batch_size: int = 64,
               num_threads: int | None = None) -> dict:
    """The parity figures of this export's int8 graph on the sample (not raising)."""
    from mlc_dist.artifacts import read_meta
    from mlc_dist.scoring.onnx_backend import onnx_digest
    from mlc_dist.scoring.pipeline import Scorer

    local = storage.local_copy(model_dir)
    meta = read_meta(local)
    batch, labels = read_sample(sample_path, local, meta)
    ref = Scorer(local, [], "fp32", num_threads, batch_size)(batch)
    got = Scorer(local, [], "fp32", num_threads, batch_size, backend="onnx-int8")(batch)
    figures = compare(meta.outputs, ref, got, labels)
    figures.update(sample=sample_path, int8_graph_sha256=onnx_digest(model_dir, "onnx-int8"))
    return figures


def gate(figures: dict, model_dir: str) -> dict:
    """`figures` when they pass; else ParityError naming the labels and figures that fail."""
    if figures["passed"]:
        return figures
    bad = {name: f for name, f in figures["per_label"].items()
           if f["flip_rate"] > MAX_FLIP_RATE or (f["auc_drop"] or 0.0) > MAX_AUC_DROP}
    detail = "; ".join(f"{n}: AUC {f['auc_fp32']} -> {f['auc_int8']} (drop {f['auc_drop']}), "
                       f"{f['flip_rate']:.2%} decisions flipped" for n, f in bad.items())
    raise ParityError(
        f"score.backend: onnx-int8 refused for {model_dir}: on {figures['rows']} rows of "
        f"{figures['sample']} the int8 scores differ from fp32 beyond the limits (AUC drop <= "
        f"{MAX_AUC_DROP}, <= {MAX_FLIP_RATE:.1%} decisions flipped per label): {detail}. Use "
        "score.backend: onnx (fp32, equal scores) or torch")


@functools.lru_cache(maxsize=8)
def _gated(model_dir: str, sample_path: str, batch_size: int, stamp: tuple) -> dict:
    return gate(check_int8(model_dir, sample_path, batch_size), model_dir)


def resolve_backend(job: JobConfig, model_dir: str) -> JobConfig:
    """`job` with score.backend made concrete: auto is onnx on a CPU job in fp32 whose export
    has an ONNX graph that computes what torch computes (exported into this machine's cache
    now, if not there yet), else torch, with the reason logged. Other backends pass as set."""
    from mlc_dist.scoring.onnx_backend import OnnxBackendError, graph_path

    sc = job.score
    if sc.backend != "auto":
        return job
    backend = "torch"
    if not job.scaling.use_gpu and sc.precision in ("auto", "fp32"):
        try:
            graph_path(model_dir, "onnx")
            backend = "onnx"
        except OnnxBackendError as exc:
            log.warning("score.backend auto: scoring with torch (%s)", exc)
    return job.model_copy(update={"score": sc.model_copy(update={"backend": backend})})


def prepare_backend(job: JobConfig, model_dir: str) -> dict | None:
    """Before scoring, on the driver: the backend's graphs made once (actors on this machine
    reuse them); for onnx-int8 the gate, whose figures are returned (for the manifest) or
    ParityError raised. Cached per export, sample and sample version within a process."""
    from mlc_dist.scoring.onnx_backend import onnx_digest

    sc = job.score
    if sc.backend == "torch":
        return None
    if sc.backend == "onnx":
        return {"backend": "onnx", "graph_sha256": onnx_digest(model_dir, "onnx")}
    fs, inner = storage.filesystem(sc.parity_sample)
    info = fs.get_file_info(inner)
    figures = _gated(model_dir, sc.parity_sample, sc.batch_size or SCORE_BATCH_CPU,
                     (info.size, info.mtime_ns))
    return {"backend": "onnx-int8", "graph_sha256": figures["int8_graph_sha256"],
            "parity": figures}
