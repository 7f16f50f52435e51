"""The commit protocol of nightly scoring: parts, their records, the manifest and `_SUCCESS`.

Output layout under `score.output`:

    part-<input stem>.parquet               ids + score_/pred_ columns, one per input file
    _quarantine/part-<input stem>.parquet   ids + `reason`, rows that were not scored
    _manifest/part-<input stem>.json        the commit record of a part (written last)
    _manifest.json                          the parts of the output: the only truth for readers
    _SUCCESS                                the sha256 of `_manifest.json`, written last of all
    _lease.json                             the one run writing (lease.py)
    _tmp/<run id>/                          that run's parts in progress

With `score.output_format: delta` the parts are instead the partitions `part=<part>/` of a Delta
table in the same folder, each committed as one transaction (delta.py); the rest is the same.

A part is written under its run's `_tmp/`, checked (rows and ids in = out + quarantined, input
unchanged, lease still held), moved into place, then its record is written: a crash leaves either
no part or a whole one, and a rerun skips the parts whose record matches the input and model.
Owns the output only; what is scored and in which order is nightly.py's, reading manifest.py's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlc_dist import data, storage
from mlc_dist.scoring import delta, faults
from mlc_dist.scoring.fingerprint import IdSet, file_identity, id_digests, same_file
from mlc_dist.scoring.textcheck import (REASON, SCORED, TRUNCATED, quarantine_rows,
                                        quarantine_schema)

log = logging.getLogger(__name__)

SUCCESS, MANIFEST, RECORDS, QUARANTINE, TMP = "_SUCCESS", "_manifest.json", "_manifest", \
    "_quarantine", "_tmp"


class AuditError(RuntimeError):
    """The output does not account for the input (rows lost or scores out of range)."""


class InputChanged(data.DataError):
    """An input file changed between being counted and its part's commit (exit 2)."""


def part_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    name = re.sub(r"(\.gz)?$", "", name)
    name = os.path.splitext(name)[0] or name
    return "part-" + re.sub(r"[^A-Za-z0-9._=-]", "_", name)


class Output:
    """The output folder on its filesystem (local or object store), written by one run (`run_id`,
    whose temp files live in `_tmp/<run_id>/`)."""

    def __init__(self, output: str, run_id: str = "reader", fmt: str = "parquet"):
        self.uri, self.format = output, fmt
        self.fs, self.root = storage.filesystem(output)
        self.root = self.root.rstrip("/")
        self.run_id = run_id

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def tmp(self, name: str) -> str:
        return self.path(TMP, self.run_id, f"{uuid.uuid4().hex[:8]}-{name}")

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_json(self, *parts: str) -> dict:
        return json.loads(self.read_bytes(*parts))

    def write_atomic(self, content: bytes, *parts: str) -> None:
        tmp = self.tmp(parts[-1])
        with self.fs.open_output_stream(tmp) as f:
            f.write(content)
        self.fs.move(tmp, self.path(*parts))

    def delete(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_file(self.path(*parts))

    def listing(self, *parts: str) -> list[str]:
        """Names of the files directly in a folder of the output (none when it is absent)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def verify_record(out: Output, record: dict, delta_files: dict | None = None) -> dict:
    """A committed part's files still match its record (else exit 3: changed after the run).
    Delta: the part's data files in the table's latest snapshot (`delta_files`) are the ones its
    commit added (Delta data files are immutable: a change is a new file)."""
    if record.get("format") == "delta" and \
            (delta_files or {}).get(record["part"], []) != record["delta_files"]:
        raise AuditError(f"{out.uri}: part {record['part']} of the Delta table differs from its "
                         "manifest record; the committed output was changed after the run "
                         "(rerun with --overwrite)")
    for key, rel in (("checksum", f"{record['part']}.parquet"),
                     ("quarantine_checksum", f"{QUARANTINE}/{record['part']}.parquet")):
        if record.get(key) and (not out.exists(rel) or out.sha256(out.path(rel)) != record[key]):
            raise AuditError(f"{out.path(rel)}: missing or checksum differs from its manifest "
                             "record; the committed output was changed after the run (rerun "
                             "with --overwrite)")
    return record


@dataclass
class InputFile:
    """One input file: its part name, schema, passthrough columns, independent row count, its
    identity (size, mtime, digest) taken before counting, and the fingerprint of its ids."""

    path: str
    name: str
    schema: pa.Schema
    passthrough: list[str]
    rows_in: int
    identity: dict
    ids_in: dict = field(default_factory=dict)


class Part:
    """One input file's output in progress: written under the run's _tmp/, committed by moves.

    `check` (the run's lease check) runs before anything becomes visible.
    """

    def __init__(self, item: InputFile, out: Output, sample: dict, has_ids: bool, check=None):
        self.input, self.out, self.has_ids, self.check = item, out, has_ids, check
        ids = pa.schema([item.schema.field(c) for c in item.passthrough])
        self.schema = pa.schema([*ids, *[pa.field(c, pa.from_numpy_dtype(v.dtype))
                                         for c, v in sample.items()]])
        self.q_schema = quarantine_schema(list(ids))
        self.score_cols = [c for c in sample if c.startswith("score_")]
        self.tmp, self.q_tmp = out.tmp(item.name), out.tmp(f"q-{item.name}")
        self.writer = self.q_writer = None  # opened on the first rows: few files open at once
        self.counts = {"rows_out": 0, "rows_quarantined": 0, "rows_truncated": 0}
        self.ids_out = IdSet()
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
            self.ids_out.add(id_digests(batch, passthrough))
        if self.counts["rows_out"] + self.counts["rows_quarantined"] > self.input.rows_in:
            self.audit_rows()

    def audit_rows(self) -> None:
        c, path = self.counts, self.input.path
        if c["rows_out"] + c["rows_quarantined"] != self.input.rows_in:
            self._check_input()  # a file rewritten while it streams: exit 2, not an audit failure
            raise AuditError(f"{path}: {self.input.rows_in} rows in but {c['rows_out']} scored + "
                             f"{c['rows_quarantined']} quarantined; nothing was committed")

    def audit_ids(self) -> dict:
        """The ids out (scored + quarantined) are the ids in, as a multiset."""
        ids_out = self.ids_out.summary() if self.has_ids and self.input.passthrough else {}
        if ids_out and self.input.ids_in and \
                ids_out["ids_fingerprint"] != self.input.ids_in["ids_fingerprint"]:
            self._check_input()
            raise AuditError(f"{self.input.path}: the ids scored + quarantined are not the ids "
                             f"read (fingerprint {ids_out['ids_fingerprint']} vs "
                             f"{self.input.ids_in['ids_fingerprint']}); nothing was committed")
        return ids_out

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
        ids_out = self.audit_ids()
        self._writer()  # a part with no scored rows is still a file, with the schema
        self.close()
        faults.point("temp_written")
        self._check_input()
        out, name = self.out, self.input.name
        record = {"part": name, "input": self.input.path, "input_identity": self.input.identity,
                  "rows_in": self.input.rows_in, **self.counts,
                  "duplicate_ids": ids_out.get("duplicate_ids", 0),
                  "ids_fingerprint": ids_out.get("ids_fingerprint"),
                  "model_id": mid, "format": out.format,
                  "checksum": out.sha256(self.tmp) if out.format == "parquet" else None,
                  "quarantine_checksum": out.sha256(self.q_tmp) if self.q_writer else None,
                  "run_id": out.run_id,
                  "committed_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        if record["duplicate_ids"]:
            log.warning("%s: %d duplicate ids", self.input.path, record["duplicate_ids"])
        if self.check is not None:
            self.check()
        if self.q_writer is None:
            out.delete(QUARANTINE, f"{name}.parquet")  # a killed attempt's
        else:
            out.fs.move(self.q_tmp, out.path(QUARANTINE, f"{name}.parquet"))
        faults.point("quarantine_moved")
        if out.format == "delta":  # one transaction replacing the part's rows
            record.update(delta.commit_part(out, name, self.tmp))
            out.fs.delete_file(self.tmp)
        else:
            out.fs.move(self.tmp, out.path(f"{name}.parquet"))
        faults.point("part_visible")
        out.write_atomic(json.dumps(record, indent=2).encode(), RECORDS, f"{name}.json")
        faults.point("record_written")
        log.debug("%s: committed %d rows (%d quarantined)", name, self.counts["rows_out"],
                  self.counts["rows_quarantined"])
        self.committed = True
        return record

    def _check_input(self) -> None:
        now = file_identity(self.input.path)
        if not same_file(self.input.identity, now):
            raise InputChanged(f"{self.input.path}: the input changed while it was scored "
                               f"(size {self.input.identity['size']} -> {now['size']}, sha256 "
                               f"{self.input.identity['sha256'][:12]} -> {now['sha256'][:12]}); "
                               "nothing of it was committed, rerun when the drop is complete")


def _audit_scores(table: pa.Table, score_cols: list[str], path: str) -> None:
    if not table.num_rows:
        return
    scores = np.stack([table.column(c).to_numpy() for c in score_cols], axis=1)
    bad = ~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise AuditError(f"{path}: {int(bad.sum())} scores not finite in [0, 1], e.g. "
                         f"{score_cols[col]}={scores[row, col]!r}; nothing was committed")
