"""The commit protocol of nightly scoring: parts, their records, the manifest and `_SUCCESS`.

Output layout under `score.output`:

    part-<input stem>.parquet               ids + score_/pred_ columns, one per input file
    _quarantine/part-<input stem>.parquet   ids + `reason`, rows that were not scored
    _manifest/part-<input stem>.json        the commit record of a part (written last)
    _manifest.json                          all records and totals; then `_SUCCESS`, last of all

A part is written under `_tmp/` and renamed into place, then its record is written: a crash
leaves either no part or a whole one, and a rerun skips the parts that have a record. Owns the
output only; what is scored and in which order is nightly.py's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlc_dist import data, storage
from mlc_dist.artifacts import META_FILE
from mlc_dist.config import JobConfigError
from mlc_dist.scoring.textcheck import (REASON, SCORED, TRUNCATED, quarantine_rows,
                                        quarantine_schema)

log = logging.getLogger(__name__)

SUCCESS, MANIFEST, RECORDS, QUARANTINE, TMP = "_SUCCESS", "_manifest.json", "_manifest", \
    "_quarantine", "_tmp"


class AuditError(RuntimeError):
    """The output does not account for the input (rows lost or scores out of range)."""


def model_id(model_dir: str) -> str:
    """Hash of the weights and the metadata: which model wrote a part."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", META_FILE):
        with open(os.path.join(model_dir, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def part_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    name = re.sub(r"(\.gz)?$", "", name)
    name = os.path.splitext(name)[0] or name
    return "part-" + re.sub(r"[^A-Za-z0-9._=-]", "_", name)


def is_complete(output: str) -> bool:
    """True only when the job wrote `_SUCCESS` (last): never trust a folder without it."""
    fs, root = storage.filesystem(output)
    return fs.get_file_info(f"{root}/{SUCCESS}").type == pafs.FileType.File


def read_scores(output: str) -> pa.Table:
    """The scores of a complete output; raises for an unfinished one."""
    if not is_complete(output):
        raise data.DataError(f"{output}: no {SUCCESS} marker; the scoring job has not finished")
    return pq.read_table(output)


class Output:
    """The output folder on its filesystem (local or object store)."""

    def __init__(self, output: str):
        self.fs, self.root = storage.filesystem(output)
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_json(self, *parts: str) -> dict:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read())

    def write_atomic(self, content: bytes, *parts: str) -> None:
        tmp = self.path(TMP, uuid.uuid4().hex)
        with self.fs.open_output_stream(tmp) as f:
            f.write(content)
        self.fs.move(tmp, self.path(*parts))

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def verify_record(out: Output, record: dict, mid: str, output: str) -> dict:
    if record["model_id"] != mid:
        raise JobConfigError(f"{output}: {record['part']} was scored with model {record['model_id']}"
                             f", score.model is {mid}; rerun with --overwrite to start over")
    for key, rel in (("checksum", f"{record['part']}.parquet"),
                     ("quarantine_checksum", f"{QUARANTINE}/{record['part']}.parquet")):
        if record.get(key) and out.sha256(out.path(rel)) != record[key]:
            raise AuditError(f"{out.path(rel)}: checksum differs from its manifest record; the "
                             "committed output was changed after the run (rerun with --overwrite)")
    return record


@dataclass
class InputFile:
    """One input file: its part name, schema, passthrough columns and independent row count."""

    path: str
    name: str
    schema: pa.Schema
    passthrough: list[str]
    rows_in: int


class Part:
    """One input file's output in progress: written under _tmp/, committed by renames."""

    def __init__(self, item: InputFile, out: Output, sample: dict, has_ids: bool):
        self.input, self.out, self.has_ids = item, out, has_ids
        ids = pa.schema([item.schema.field(c) for c in item.passthrough])
        self.schema = pa.schema([*ids, *[pa.field(c, pa.from_numpy_dtype(v.dtype))
                                         for c, v in sample.items()]])
        self.q_schema = quarantine_schema(list(ids))
        self.score_cols = [c for c in sample if c.startswith("score_")]
        self.tmp = out.path(TMP, f"{uuid.uuid4().hex}-{item.name}")
        self.q_tmp = out.path(TMP, f"q-{uuid.uuid4().hex}-{item.name}")
        self.writer = self.q_writer = None  # opened on the first rows: few files open at once
        self.counts = {"rows_out": 0, "rows_quarantined": 0, "rows_truncated": 0}
        self.hashes: list[np.ndarray] = []
        self.committed = False

    @property
    def done(self) -> bool:
        return self.counts["rows_out"] + self.counts["rows_quarantined"] >= self.input.rows_in

    def add(self, batch: pa.Table) -> None:
        passthrough = self.input.passthrough
        reason = batch.column(REASON).to_numpy(zero_copy_only=False)
        ok = np.isin(reason, SCORED)
        scored = batch.filter(pa.array(ok)).select(self.schema.names).cast(self.schema)
        _audit_scores(scored, self.score_cols, self.input.path)
        self._writer().write_table(scored)
        if (~ok).any():
            q = quarantine_rows(batch.filter(pa.array(~ok)), passthrough, self.input.path,
                                self.q_schema)
            self.q_writer = self.q_writer or pq.ParquetWriter(self.q_tmp, self.q_schema,
                                                              filesystem=self.out.fs)
            self.q_writer.write_table(q)
        self.counts["rows_out"] += scored.num_rows
        self.counts["rows_quarantined"] += int((~ok).sum())
        self.counts["rows_truncated"] += int((reason == TRUNCATED).sum())
        if passthrough and self.has_ids:
            keys = zip(*(batch.column(c).to_pylist() for c in passthrough))
            self.hashes.append(np.fromiter((hash(k) for k in keys), np.int64, count=len(batch)))
        if self.counts["rows_out"] + self.counts["rows_quarantined"] > self.input.rows_in:
            self.audit_rows()

    def audit_rows(self) -> None:
        c, path = self.counts, self.input.path
        if c["rows_out"] + c["rows_quarantined"] != self.input.rows_in:
            raise AuditError(f"{path}: {self.input.rows_in} rows in but {c['rows_out']} scored + "
                             f"{c['rows_quarantined']} quarantined; nothing was committed")

    def _writer(self) -> pq.ParquetWriter:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, filesystem=self.out.fs)
        return self.writer

    def close(self) -> None:
        for writer in (self.writer, self.q_writer):
            if writer is not None and writer.is_open:
                writer.close()

    def commit(self, mid: str) -> dict:
        self.audit_rows()
        self._writer()  # a part with no scored rows is still a file, with the schema
        self.close()
        out, name = self.out, self.input.name
        all_hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.int64)
        record = {"part": name, "input": self.input.path, "rows_in": self.input.rows_in,
                  **self.counts,
                  "duplicate_ids": int(len(all_hashes) - len(np.unique(all_hashes))),
                  "model_id": mid, "checksum": out.sha256(self.tmp),
                  "quarantine_checksum": out.sha256(self.q_tmp) if self.q_writer else None,
                  "committed_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        if record["duplicate_ids"]:
            log.warning("%s: %d duplicate ids", self.input.path, record["duplicate_ids"])
        if self.q_writer is None and out.exists(QUARANTINE, f"{name}.parquet"):
            out.fs.delete_file(out.path(QUARANTINE, f"{name}.parquet"))  # a killed attempt's
        if self.q_writer is not None:
            out.fs.move(self.q_tmp, out.path(QUARANTINE, f"{name}.parquet"))
        out.fs.move(self.tmp, out.path(f"{name}.parquet"))
        out.write_atomic(json.dumps(record, indent=2).encode(), RECORDS, f"{name}.json")
        log.debug("%s: committed %d rows (%d quarantined)", name, self.counts["rows_out"],
                 self.counts["rows_quarantined"])
        self.committed = True
        return record


def _audit_scores(table: pa.Table, score_cols: list[str], path: str) -> None:
    if not table.num_rows:
        return
    scores = np.stack([table.column(c).to_numpy() for c in score_cols], axis=1)
    bad = ~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise AuditError(f"{path}: {int(bad.sum())} scores not finite in [0, 1], e.g. "
                         f"{score_cols[col]}={scores[row, col]!r}; nothing was committed")
