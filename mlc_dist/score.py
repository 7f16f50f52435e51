"""Batch inference with Ray Data: read -> tokenize (tasks) -> Scorer (actor pool) -> Parquet.

Owns scoring only; the model folder format is artifacts.py's, file layouts are data.py's.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import pyarrow.fs as pafs
import ray.data
import torch

from mlc_dist import data
from mlc_dist.artifacts import read_meta
from mlc_dist.config import JobConfig
from mlc_dist.losses import build_objective

log = logging.getLogger(__name__)


def score_columns(names) -> list[str]:
    return [f"score_{n}" for n in names]


def pred_columns(names) -> list[str]:
    return [f"pred_{n}" for n in names]


class Scorer:
    """Loads the exported model once per actor; maps token batches to per-label scores."""

    def __init__(self, model_dir: str, passthrough: list[str], precision: str = "fp32",
                 num_threads: int | None = None):
        from mlc_dist.artifacts import load_export

        if num_threads:
            torch.set_num_threads(num_threads)
        self.model, tokenizer, self.meta = load_export(model_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.passthrough = passthrough
        self.thresholds = np.asarray(self.meta.thresholds, dtype=np.float32)
        self.objective = build_objective(self.meta.label_space, self.meta.extra.get("head", "linear"))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {k: torch.from_numpy(v).to(self.device)
                  for k, v in data.pad_batch(batch, self.pad_token_id).items()}
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            logits = self.model(**inputs).logits
        probs = self.objective.probabilities(logits.float()).cpu().numpy()  # [B, num_outputs]
        out = {c: batch[c] for c in self.passthrough}
        out.update(self.objective.columns(probs, self.thresholds))
        return out


def _passthrough(job: JobConfig, ds: ray.data.Dataset) -> list[str]:
    if job.data.id_columns:
        return list(job.data.id_columns)
    # No ids declared: keep every input column that is not text or a label.
    cfg = job.data
    drop = {cfg.text_column, cfg.text_pair_column, cfg.label_list_column, data.PATH,
            *(cfg.label_columns or []), *(cfg.feature_columns or [])}
    return [c for c in ds.schema().names if c not in drop]


def score_dataset(job: JobConfig, ds: ray.data.Dataset, model_dir: str, max_length: int,
                  passthrough: list[str], batch_size: int) -> ray.data.Dataset:
    """Normalized rows -> model inputs -> Scorer actor pool (lazy); shared by score and evaluate."""
    ds = data.encode(ds, job.data, model_dir, max_length, keep=passthrough)
    return ds.map_batches(
        Scorer,
        fn_constructor_args=(model_dir, passthrough, job.train.precision if job.scaling.use_gpu
                             else "fp32", int(job.scaling.cpus_per_worker)),
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.score.num_actors),
        num_gpus=1 if job.scaling.use_gpu else 0, num_cpus=job.scaling.cpus_per_worker)


def run(job: JobConfig, input_paths=None, output: str | None = None) -> dict:
    """Score `score.input` with `score.model`; write Parquet to `score.output` (replaced whole)."""
    from mlc_dist.runtime import init_ray

    input_paths = input_paths or job.score.input
    output = output or job.score.output
    if not input_paths or not output:
        raise ValueError("score.input and score.output must be set")
    model_dir = job.score_model
    meta = read_meta(model_dir)
    init_ray(min_cpus=job.score.num_actors)
    cfg = job.data.model_copy(update={"text_column": meta.text_column,
                                      "text_pair_column": meta.text_pair_column,
                                      "feature_columns": meta.extra.get("feature_columns")})
    raw = data.read_table(input_paths, cfg, [cfg.text_column, *cfg.id_columns])
    passthrough = _passthrough(job, raw)
    ds = score_dataset(job, data.read_unlabelled(input_paths, cfg, passthrough), model_dir,
                       meta.max_length, passthrough, job.score.batch_size)
    fs, final = data.object_store_fs(output)
    tmp = f"{final.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_uri = tmp if "://" not in output else f"{output.split('://')[0]}://{tmp}"
    started = time.perf_counter()
    # Write beside the final name, then swap in: a crash never leaves a half-written output there.
    ds.write_parquet(tmp_uri)
    elapsed = time.perf_counter() - started
    if fs.get_file_info(final).type != pafs.FileType.NotFound:
        fs.delete_dir(final)
    fs.move(tmp, final)
    rows = ray.data.read_parquet(output).count()
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / max(elapsed, 1e-9),
            "output": output, "model": model_dir}
