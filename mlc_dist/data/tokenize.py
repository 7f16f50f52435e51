"""Streaming tokenization and batching: the tokenizer UDF, dynamic padding, length buckets.
Not reading or validation (read.py, labels.py). No torch loops: padding to a batch happens in the
consumer (train/worker.py, scoring/pipeline.py) through `pad_batch`."""

from __future__ import annotations

import functools

import numpy as np
import ray.data

from mlc_dist.config import DataConfig
from mlc_dist.data.read import FEATURES, TEXT, TEXT_PAIR


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    # Cached per process: Ray Data task workers are reused, so each loads a tokenizer once.
    # An object-store folder (a run's tokenizer or export) is read from this machine's copy.
    from transformers import AutoTokenizer

    from mlc_dist.storage import local_copy

    return AutoTokenizer.from_pretrained(local_copy(path))


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


def padding_of(tokenizer) -> tuple[int, str]:
    """(pad_token_id, padding_side) for a model's batches: its tokenizer's, which knows where the
    family reads its summary (XLNet's classifier reads the last position, so it pads left).
    No tokenizer (tabular rows): nothing is padded."""
    if tokenizer is None:
        return 0, "right"
    return tokenizer.pad_token_id, tokenizer.padding_side


def padded_width(longest: int, multiple: int = 1, max_width: int | None = None) -> int:
    """The width a batch whose longest row has `longest` tokens is padded to: rounded up to
    `multiple` (tensor-core tiles; a bounded set of shapes for torch.compile), but never past
    `max_width` (data.max_length: the tokenizer's cap, within the model's position embeddings)
    unless a row is longer itself. With max_length a multiple of `multiple` (128, 512) every
    width is a multiple; otherwise the longest batches take max_length, one more shape."""
    if longest <= 0:
        return 0
    width = -(-longest // multiple) * multiple
    return max(longest, min(width, max_width)) if max_width is not None else width


def pad_batch(batch: dict[str, np.ndarray], pad_token_id: int,
              padding_side: str = "right", multiple: int = 1,
              max_width: int | None = None) -> dict[str, np.ndarray]:
    """Pad ragged token columns to the longest row of this batch (dynamic padding), rounded up
    to `multiple` and capped at `max_width` (see `padded_width`), on the tokenizer's
    `padding_side`. The attention mask is 0 on every added position, so scores do not change.

    Written here rather than `tokenizer.pad` because the rows arrive as numpy arrays and a
    per-row list conversion would dominate the step time on CPU.
    """
    if FEATURES in batch:  # tabular rows: nothing to pad
        return {FEATURES: np.asarray(batch[FEATURES], dtype=np.float32)}
    ids = batch["input_ids"]
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
    width = padded_width(int(lengths.max()) if len(ids) else 0, multiple, max_width)
    positions = np.arange(width)[None, :]
    # [B, T]; row-major, so each row's tokens fill its True positions in order
    mask = positions >= (width - lengths)[:, None] if padding_side == "left" else \
        positions < lengths[:, None]
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
