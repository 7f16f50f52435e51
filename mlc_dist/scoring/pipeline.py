"""The scoring pipeline in Ray Data: rows -> check text (tasks) -> tokenize (tasks) -> Scorer
(actor pool), lazily. Shared by nightly scoring (nightly.py) and evaluation.

Owns inference only: committing output is commit.py's, the model folder format artifacts.py's,
file layouts data/'s, what the outputs mean the output schema's (models/outputs.py).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import ray.data
import torch

from mlc_dist import data, runtime
from mlc_dist.data import textspec
from mlc_dist.artifacts import ModelMeta
from mlc_dist.config import SCORE_BATCH_CPU, SCORE_BATCH_GPU, JobConfig
from mlc_dist.precision import resolve
from mlc_dist.scoring.textcheck import OK, REASON, SCORED, CheckText

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The scorer's precision on its device (see `mlc_dist.precision.resolve`)."""
    return resolve(precision, device, key="score.precision", training=False)


def assigned_device() -> torch.device:
    """Inside a Ray actor: its GPU only if Ray assigned one (Ray then sets CUDA_VISIBLE_DEVICES,
    so it is cuda:0), else CPU, never an unreserved GPU of a shared node. Outside Ray: cuda:0 if
    there is one."""
    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        return torch.device("cuda", 0) if gpus else torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_batch_size(device: torch.device) -> int:
    """Rows per forward pass when score.batch_size is unset: 256 on a GPU, 64 on CPU."""
    return SCORE_BATCH_GPU if device.type == "cuda" else SCORE_BATCH_CPU


def pool_size(job: JobConfig) -> int:
    """Scoring actors: score.num_actors, or when unset one per GPU of the (running) Ray cluster
    on a GPU job (at least 1: an autoscaling cluster may start with none), else 1."""
    if job.score.num_actors:
        return job.score.num_actors
    if not job.scaling.use_gpu:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0)))


def actor_threads(num_actors: int, reserved_cpus: float) -> int:
    """Threads for one scoring actor: its node's CPUs (as Ray counts them) shared by the pool,
    never fewer than it reserved, and never more than the cores this process may run on: a
    local cluster advertises more logical CPUs than the machine has (runtime.init_ray), and
    one thread more than the cores cost ONNX Runtime 7% of its speed on a 2-core machine (639
    vs 597 rows/s steady, `mlc-dist bench score --backend onnx`).
    Computed in the actor, on its own node: the driver's CPU count says nothing about a
    worker node."""
    node = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node), 1)
    return max(1, min(max(int(reserved_cpus), int(cpus) // num_actors), runtime.usable_cores()))


class Scorer:
    """Loads the exported model once per actor; maps token batches to per-label scores.

    Each incoming batch is a window: its rows are ordered by length and run in sub-batches of
    `batch_size`, each padded to its own longest row (rounded up to `pad_to_multiple_of`, never
    past the model's max_length), then put back in the window's order. Rows
    whose `_reason` says not to score get NaN scores (the job quarantines them). The
    `passthrough` columns (ids, and `_reason` when the caller wants it back) are copied as is.
    """

    def __init__(self, model_dir: str, passthrough: list[str], precision: str = "fp32",
                 num_threads: int | None = None, batch_size: int | None = None,
                 backend: str = "torch",
                 export_digest: str | None = None, pad_to_multiple_of: int = 1,
                 graph_digest: str | None = None):
        from mlc_dist.artifacts import load_export, verify_export
        from mlc_dist.scoring.onnx_backend import load_onnx

        if num_threads:
            torch.set_num_threads(num_threads)
        self.onnx = None
        if backend != "torch":  # an ONNX Runtime session (CPU, fp32 or int8 graph)
            verify_export(model_dir, export_digest)
            # graph_digest: the graph the job identified; another one on this node is refused.
            self.onnx, tokenizer, self.meta = load_onnx(model_dir, backend, num_threads,
                                                        graph_digest)
        else:
            # export_digest: the export the job identified; a replaced one is refused.
            self.model, tokenizer, self.meta = load_export(model_dir,
                                                           expected_digest=export_digest)
            self.device = assigned_device()
            # Cast once for the precision (autocast would re-cast every weight on every forward).
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
                resolve_precision(precision, self.device)]
            self.model.to(self.device, dtype)
        self.pad_token_id, self.padding_side = data.padding_of(tokenizer)
        # Unset: by device (ONNX Runtime runs on CPU).
        self.passthrough = passthrough
        self.batch_size = batch_size or default_batch_size(
            torch.device("cpu") if self.onnx is not None else self.device)
        # pad_batch's width rule: a multiple of this, capped at the length the model takes.
        self.padding = dict(multiple=pad_to_multiple_of, max_width=self.meta.max_length)
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
        # Sub-batch results stay on the device; one copy back per window, not per sub-batch.
        chunks = [self._forward({k: batch[k][todo[i:i + self.batch_size]] for k in inputs})
                  for i in range(0, len(todo), self.batch_size)]
        if chunks:
            probs[todo] = torch.cat(chunks).cpu().numpy()
        out = {c: batch[c] for c in self.passthrough}
        out.update(self.outputs.columns(probs, self.thresholds))
        return out

    def _forward(self, tokens: dict[str, np.ndarray]) -> torch.Tensor:
        if self.onnx is not None:
            padded = data.pad_batch(tokens, self.pad_token_id, self.padding_side,
                                    **self.padding)
            logits = torch.from_numpy(self.onnx(padded))
            return self.outputs.probabilities(logits)
        cuda = self.device.type == "cuda"
        inputs = {k: self._to_device(torch.from_numpy(v), cuda)
                  for k, v in data.pad_batch(tokens, self.pad_token_id, self.padding_side,
                                             **self.padding).items()}
        logits = self.model(**inputs).logits
        return self.outputs.probabilities(logits.float())  # [B, num_outputs], on the device

    def _to_device(self, t: torch.Tensor, cuda: bool) -> torch.Tensor:
        if t.is_floating_point():  # tabular features: the model's dtype
            t = t.to(next(self.model.parameters()).dtype)
        return t.pin_memory().to(self.device, non_blocking=True) if cuda else t


class _PoolScorer(Scorer):
    """A Scorer in a Ray Data actor pool: threads decided on the actor's own node."""

    def __init__(self, model_dir, passthrough, precision, threads, batch_size, num_actors,
                 reserved_cpus, backend="torch", export_digest=None, pad_to_multiple_of=1,
                 graph_digest=None):
        super().__init__(model_dir, passthrough, precision,
                         threads or actor_threads(num_actors, reserved_cpus), batch_size, backend,
                         export_digest, pad_to_multiple_of, graph_digest)


def passthrough_columns(job: JobConfig, meta: ModelMeta, names: list[str]) -> list[str]:
    if job.data.id_columns:
        return list(job.data.id_columns)
    # No ids declared: keep every input column that is not text or a label.
    cfg = job.data
    drop = {*textspec.input_columns(meta), meta.text_pair_column, cfg.label_list_column,
            data.PATH, data.LINE, data.READ_ERROR, *(cfg.label_columns or []),
            *(cfg.feature_columns or [])}
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
        keep = [*passthrough, REASON]
    else:  # text input: the declared bad-text policy applies
        check = CheckText(meta.text_column, passthrough, sc.on_bad_text, sc.on_long_text,
                          sc.max_chars, meta.text_pair_column)
        raw = raw.map_batches(check, batch_format="pyarrow")
        keep = [*passthrough, data.LINE, REASON]  # the line: for the quarantine
    return score_dataset(job, raw, model_dir, meta.max_length, keep, sc.batch_size,
                         export_digest)


def score_dataset(job: JobConfig, ds: ray.data.Dataset, model_dir: str, max_length: int,
                  passthrough: list[str], batch_size: int | None,
                  export_digest: str | None = None) -> ray.data.Dataset:
    """Rows -> model inputs (tasks) -> Scorer actor pool (lazy); shared by score and evaluate."""
    from mlc_dist.scoring import parity

    job = parity.resolve_backend(job, model_dir)
    sc = job.score
    num_actors = pool_size(job)
    # onnx-int8: the parity gate first (refuses a bad quantization); graphs made on the driver.
    backend = parity.prepare_backend(job, model_dir) or {}
    ds = data.encode(ds, job.data, model_dir, max_length, keep=passthrough)
    return ds.map_batches(
        _PoolScorer, fn_constructor_args=(model_dir, passthrough, sc.precision,
                                          sc.threads_per_actor, batch_size, num_actors,
                                          job.scaling.cpus_per_worker, sc.backend,
                                          export_digest, job.pad_multiple,
                                          backend.get("graph_sha256")),
        batch_size=sc.window_rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if job.scaling.use_gpu else 0, num_cpus=job.scaling.cpus_per_worker)

