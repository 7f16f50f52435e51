"""The scoring pipeline in Ray Data: rows -> check text (tasks) -> tokenize (tasks) -> Scorer
(actor pool), lazily. Shared by nightly scoring (nightly.py) and evaluation.

Owns inference only: committing output is commit.py's, the model folder format artifacts.py's,
file layouts data/'s, what the outputs mean the output schema's (models/outputs.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import ray.data
import torch

from mlc_dist import data
from mlc_dist.artifacts import ModelMeta
from mlc_dist.config import JobConfig
from mlc_dist.scoring.textcheck import OK, REASON, SCORED, CheckText

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 (fp16 without bf16 support) on GPU; fp32 on CPU unless it has AMX bf16."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        with open("/proc/cpuinfo") as f:
            return "bf16" if " amx_bf16" in f.read() else "fp32"
    except OSError:
        return "fp32"


class Scorer:
    """Loads the exported model once per actor; maps token batches to per-label scores.

    Each incoming batch is a window: its rows are ordered by length and run in sub-batches of
    `batch_size`, each padded to its own longest row, then put back in the window's order. Rows
    whose `_reason` says not to score get NaN scores (the job quarantines them). The
    `passthrough` columns (ids, and `_reason` when the caller wants it back) are copied as is.
    """

    def __init__(self, model_dir: str, passthrough: list[str], precision: str = "fp32",
                 num_threads: int | None = None, batch_size: int = 64,
                 export_digest: str | None = None):
        from mlc_dist.artifacts import load_export

        if num_threads:
            torch.set_num_threads(num_threads)
        # export_digest: the export the job identified; a replaced one is refused (ExportChanged).
        self.model, tokenizer, self.meta = load_export(model_dir, expected_digest=export_digest)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            resolve_precision(precision, self.device))
        self.passthrough, self.batch_size = passthrough, batch_size
        self.thresholds = np.asarray(self.meta.thresholds, dtype=np.float32)
        self.outputs = self.meta.outputs

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [k for k in ("input_ids", "token_type_ids", data.FEATURES) if k in batch]
        num_rows = len(batch[inputs[0]])
        probs = np.full((num_rows, self.outputs.num_outputs), np.nan, dtype=np.float32)
        todo = np.arange(num_rows) if REASON not in batch else np.flatnonzero(
            np.isin(batch[REASON], SCORED))
        if "input_ids" in batch:  # order by length so each sub-batch pads to its own longest row
            ids = batch["input_ids"]
            lengths = np.fromiter((len(ids[i]) for i in todo), dtype=np.int64, count=len(todo))
            todo = todo[np.argsort(lengths, kind="stable")]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            probs[rows] = self._forward({k: batch[k][rows] for k in inputs})
        out = {c: batch[c] for c in self.passthrough}
        out.update(self.outputs.columns(probs, self.thresholds))
        return out

    def _forward(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: torch.from_numpy(v).to(self.device)
                  for k, v in data.pad_batch(tokens, self.pad_token_id).items()}
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            logits = self.model(**inputs).logits
        return self.outputs.probabilities(logits.float()).cpu().numpy()  # [B, num_outputs]


def passthrough_columns(job: JobConfig, meta: ModelMeta, names: list[str]) -> list[str]:
    if job.data.id_columns:
        return list(job.data.id_columns)
    # No ids declared: keep every input column that is not text or a label.
    cfg = job.data
    drop = {meta.text_column, meta.text_pair_column, cfg.label_list_column, data.PATH,
            *(cfg.label_columns or []), *(cfg.feature_columns or [])}
    return [c for c in names if c not in drop]


def _all_scored(batch: pa.Table) -> pa.Table:
    return batch.append_column(REASON, pa.array([OK] * len(batch), pa.string()))


def scored_dataset(job: JobConfig, paths: list[str], model_dir: str, meta: ModelMeta,
                   raw: ray.data.Dataset, passthrough: list[str],
                   export_digest: str | None = None) -> ray.data.Dataset:
    """Lazy dataset of passthrough columns + `_reason` + score_/pred_ columns for `paths`."""
    sc = job.score
    if job.data.feature_columns:  # tabular input: numeric features, checked by Normalize
        raw = raw.map_batches(data.Normalize(job.data, None, None, passthrough),
                              batch_format="pyarrow")
        raw = raw.map_batches(_all_scored, batch_format="pyarrow")
    else:  # text input: the declared bad-text policy applies
        check = CheckText(meta.text_column, passthrough, sc.on_bad_text, sc.on_long_text,
                          sc.max_chars, meta.text_pair_column)
        raw = raw.map_batches(check, batch_format="pyarrow")
    return score_dataset(job, raw, model_dir, meta.max_length, [*passthrough, REASON],
                         sc.batch_size, export_digest)


def score_dataset(job: JobConfig, ds: ray.data.Dataset, model_dir: str, max_length: int,
                  passthrough: list[str], batch_size: int,
                  export_digest: str | None = None) -> ray.data.Dataset:
    """Rows -> model inputs (tasks) -> Scorer actor pool (lazy); shared by score and evaluate."""
    sc = job.score
    ds = data.encode(ds, job.data, model_dir, max_length, keep=passthrough)
    threads = sc.threads_per_actor or max(1, (os.cpu_count() or 1) // sc.num_actors)
    return ds.map_batches(
        Scorer, fn_constructor_args=(model_dir, passthrough, sc.precision, threads, batch_size,
                             export_digest),
        batch_size=sc.window_rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=sc.num_actors),
        num_gpus=1 if job.scaling.use_gpu else 0, num_cpus=job.scaling.cpus_per_worker)

