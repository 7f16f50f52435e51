"""Identities the commit protocol compares: input files, the model, and the set of row ids.

All are content digests (sha256 / blake2b), stable across runs, processes and machines; never
Python's hash(), which is salted per process. Owns no I/O decisions beyond reading what it hashes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mlc_dist import storage

_PARQUET_MAGIC = b"PAR1"


def file_identity(path: str) -> dict:
    """Size, modification time and a digest: of the footer for Parquet (it holds every row
    group's offsets, sizes and statistics; reading it is cheap), of the whole file otherwise."""
    fs, inner = storage.filesystem(path)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: input file is gone")
    digest = hashlib.sha256()
    with fs.open_input_file(inner) as f:
        size = f.size()
        tail = f.read_at(8, size - 8) if size >= 12 else b""
        if tail[4:] == _PARQUET_MAGIC:
            footer_len = int.from_bytes(tail[:4], "little")
            digest.update(b"parquet-footer:")
            digest.update(f.read_at(footer_len + 8, size - 8 - footer_len))
        else:
            f.seek(0)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return {"size": size, "mtime_ns": info.mtime_ns, "sha256": digest.hexdigest()}


def same_file(a: dict | None, b: dict) -> bool:
    """Recorded identity vs now: any difference (even a touch) means score the file again."""
    return a is not None and all(a.get(k) == b[k] for k in ("size", "mtime_ns", "sha256"))


def model_id(model_dir: str, settings: dict | None = None,
             export_digest: str | None = None) -> str:
    """The export's files (storage.export_digest) plus the scoring settings that change scores
    (precision, max_chars, on_long_text): two parts with one model_id were scored the same way."""
    digest = hashlib.sha256((export_digest or storage.export_digest(model_dir)).encode())
    digest.update(json.dumps(settings or {}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def scoring_settings(score) -> dict:
    """The `score.*` keys that change what a model outputs for a row."""
    return {"precision": score.precision, "max_chars": score.max_chars,
            "on_long_text": score.on_long_text}


def _canonical(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + value.hex()
    return value


def id_digests(table: pa.Table, columns: list[str]) -> np.ndarray:
    """One 64-bit digest per row of the id columns' values ([num_rows] uint64)."""
    values = [table.column(c).to_pylist() for c in columns]
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(json.dumps([_canonical(v) for v in key], default=str)
                                        .encode(), digest_size=8).digest(), "little")
         for key in zip(*values)), np.uint64, count=table.num_rows)


class IdSet:
    """An order-independent fingerprint of a multiset of ids: the sum of their digests modulo
    2^64 (a sum, unlike XOR, keeps duplicates), plus the count and the number of duplicates."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def add(self, digests: np.ndarray) -> None:
        self.parts.append(digests)

    def summary(self) -> dict:
        allv = np.concatenate(self.parts) if self.parts else np.zeros(0, np.uint64)
        total = int(allv.sum(dtype=np.uint64)) if len(allv) else 0
        return {"ids_fingerprint": f"{total:016x}", "ids": int(len(allv)),
                "duplicate_ids": int(len(allv) - len(np.unique(allv)))}
