"""Rerunnable bulk scoring: one committed Parquet part per input file, a manifest, `_SUCCESS`.

Output layout under `score.output` (any `{date}` in the paths is the `--date` partition):

    part-<input stem>.parquet               ids + score_/pred_ columns, one per input file
    _quarantine/part-<input stem>.parquet   ids + `reason`, rows that were not scored
    _manifest/part-<input stem>.json        the commit record of a part (written last)
    _manifest.json                          all records and totals; then `_SUCCESS`, last of all

A part is written under `_tmp/` and renamed into place, then its record is written: a crash
leaves either no part or a whole one, and a rerun skips the parts that have a record.

Consecutive pending files with one schema stream through one dataset, so a drop of many files
starts the scoring actors (imports, model load) once; a part commits as soon as its rows out
plus quarantined reach its rows in, counted beforehand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlc_dist import data
from mlc_dist.artifacts import META_FILE, read_meta
from mlc_dist.config import JobConfig, JobConfigError
from mlc_dist.textcheck import REASON, SCORED, TRUNCATED

log = logging.getLogger(__name__)

SUCCESS, MANIFEST, RECORDS, QUARANTINE, TMP = "_SUCCESS", "_manifest.json", "_manifest", \
    "_quarantine", "_tmp"
FAULT_ENV = "MLC_DIST_FAULT_AFTER_PARTS"  # tests: os._exit right after the n-th committed part


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


def substitute_date(value, date: str | None, key: str):
    if value is None:
        return None
    if isinstance(value, list):
        return [substitute_date(v, date, key) for v in value]
    if "{date}" not in value:
        return value
    if date is None:
        raise JobConfigError(f"{key}: {value!r} has a {{date}} partition; pass --date YYYY-MM-DD")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise JobConfigError(f"--date {date!r}: expected YYYY-MM-DD") from None
    return value.replace("{date}", date)


def input_files(paths) -> list[str]:
    """Files to score, in order: globs expanded, folders listed (hidden/underscore files skipped)."""
    out = []
    for p in data.expand_paths(paths):
        if "://" not in p and os.path.isdir(p):
            out.extend(os.path.join(p, n) for n in sorted(os.listdir(p))
                       if not n.startswith((".", "_")) and os.path.isfile(os.path.join(p, n)))
        else:
            out.append(p)
    if not out:
        raise data.DataError(f"{paths}: no input files")
    return out


def part_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    name = re.sub(r"(\.gz)?$", "", name)
    name = os.path.splitext(name)[0] or name
    return "part-" + re.sub(r"[^A-Za-z0-9._=-]", "_", name)


def is_complete(output: str) -> bool:
    """True only when the job wrote `_SUCCESS` (last): never trust a folder without it."""
    fs, root = data.object_store_fs(output)
    return fs.get_file_info(f"{root}/{SUCCESS}").type == pafs.FileType.File


def read_scores(output: str) -> pa.Table:
    """The scores of a complete output; raises for an unfinished one."""
    if not is_complete(output):
        raise data.DataError(f"{output}: no {SUCCESS} marker; the scoring job has not finished")
    return pq.read_table(output)


class _Output:
    def __init__(self, output: str):
        self.fs, self.root = data.object_store_fs(output)
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


def run(job: JobConfig, input_paths=None, output: str | None = None, date: str | None = None,
        overwrite: bool = False) -> dict:
    from mlc_dist.runtime import init_ray

    inputs = substitute_date(input_paths or job.score.input, date, "score.input")
    output = substitute_date(output or job.score.output, date, "score.output")
    if not inputs or not output:
        raise JobConfigError("score.input and score.output must be set")
    files = input_files(inputs)
    names = [part_name(f) for f in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise data.DataError(f"input files share a part name {clash}: rename them, or score them "
                             "into separate outputs")
    model_dir = job.score_model
    meta, mid = read_meta(model_dir), model_id(model_dir)
    out = _Output(output)
    if overwrite and out.exists():
        out.fs.delete_dir(out.root)
    for sub in (RECORDS, QUARANTINE, TMP):
        out.fs.create_dir(out.path(sub))
    out.fs.delete_dir_contents(out.path(TMP))  # leftovers of a killed run: never committed
    done = {}
    for name in names:
        if out.exists(RECORDS, f"{name}.json"):
            done[name] = _verify(out, out.read_json(RECORDS, f"{name}.json"), mid, output)
    if out.exists(SUCCESS) and len(done) < len(names):
        raise JobConfigError(f"{output}: complete for other inputs; rerun with --overwrite")
    started, committed = time.perf_counter(), 0
    pending = [(path, name) for path, name in zip(files, names) if name not in done]
    for name in done:
        log.info("%s: committed by an earlier run, skipped", name)
    records = dict(done)
    fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    if pending:
        init_ray(min_cpus=job.score.num_actors * job.scaling.cpus_per_worker)
    for group in _schema_groups(job, meta, pending):
        for record in _score_group(job, group, model_dir, meta, mid, out):
            records[record["part"]] = record
            committed += 1
            if fault_after and committed >= fault_after:
                os._exit(99)
    records = [records[name] for name in names]
    elapsed = time.perf_counter() - started
    totals = {k: sum(r[k] for r in records) for k in
              ("rows_in", "rows_out", "rows_quarantined", "rows_truncated", "duplicate_ids")}
    manifest = {"model_id": mid, "model": model_dir, "output": output, "date": date,
                "parts": records, **totals}
    out.write_atomic(json.dumps(manifest, indent=2).encode(), MANIFEST)
    out.write_atomic(b"", SUCCESS)
    new_rows = sum(r["rows_in"] for r in records if r["part"] not in done)
    return {"rows": totals["rows_out"], **totals, "parts_committed": committed,
            "parts_skipped": len(done), "seconds": elapsed,
            "rows_per_s": new_rows / max(elapsed, 1e-9), "output": output, "model": model_dir,
            "model_id": mid}


def _verify(out: _Output, record: dict, mid: str, output: str) -> dict:
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
class _Input:
    """One input file: its part name, schema, passthrough columns and independent row count."""

    path: str
    name: str
    schema: pa.Schema
    passthrough: list[str]
    rows_in: int


def _schema_groups(job: JobConfig, meta, pending: list[tuple[str, str]]):
    """Runs of consecutive pending files with one schema: each run is scored by one dataset
    (one actor pool, started once), so a drop of many files pays the actors' start once."""
    from mlc_dist.score import passthrough_columns

    cfg = _data_config(job, meta)
    group: list[_Input] = []
    for path, name in pending:
        raw = data.read_table([path], cfg, [cfg.text_column, *cfg.id_columns])
        schema = raw.schema().base_schema
        passthrough = passthrough_columns(job, meta, schema.names)
        inputs = job.data.feature_columns or [cfg.text_column]
        missing = [c for c in [*inputs, *passthrough] if c not in schema.names]
        if missing:
            raise data.DataError(f"{path}: missing column(s) {missing}; columns are "
                                 f"{schema.names}")
        item = _Input(path, name, schema, passthrough, raw.count())
        # An empty file streams nothing, so its schema (often all-null types) splits no run.
        ref = next((g.schema for g in group if g.rows_in), None)
        if item.rows_in and ref is not None and not schema.equals(ref):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _data_config(job: JobConfig, meta):
    return job.data.model_copy(update={"text_column": meta.text_column,
                                       "text_pair_column": meta.text_pair_column})


def _path_key(path: str) -> str:
    """A file's path as Ray Data's `path` column gives it: no scheme, absolute when local."""
    if "://" in path:
        return path.split("://", 1)[1]
    return os.path.abspath(path)


def _score_group(job: JobConfig, group: list[_Input], model_dir: str, meta, mid: str,
                 out: _Output):
    """Score files of one schema in one streaming dataset; yield each part's record right after
    its commit. A part commits when its rows out + quarantined reach its rows in."""
    from mlc_dist.losses import build_objective
    from mlc_dist.score import scored_dataset

    cfg = _data_config(job, meta)
    streamed = [f for f in group if f.rows_in]
    # The output columns are whatever the model's objective writes (binary or per-category).
    objective = build_objective(meta.label_space, meta.extra.get("head", "linear"))
    sample = objective.columns(np.zeros((1, objective.num_outputs), np.float32),
                               np.asarray(meta.thresholds, dtype=np.float32))
    parts = {_path_key(f.path): _Part(f, out, sample, bool(job.data.id_columns)) for f in group}
    for part in list(parts.values()):
        if part.input.rows_in == 0:  # nothing will stream for it
            yield part.commit(mid)
    if not streamed:
        return
    paths = [f.path for f in streamed]
    raw = data.read_table(paths, cfg, [cfg.text_column, *cfg.id_columns])
    ds = scored_dataset(job, paths, model_dir, meta, raw, [*streamed[0].passthrough, data.PATH])
    ds.context.execution_options.preserve_order = True  # parts complete, and commit, in order
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            of_row = batch.column(data.PATH).to_numpy(zero_copy_only=False)
            for key in dict.fromkeys(of_row):
                part = parts.get(key)
                if part is None:
                    raise AuditError(f"scored rows of {key!r}, which is not one of the inputs "
                                     f"{paths}; nothing more was committed")
                part.add(batch.filter(pa.array(of_row == key)))
                if part.done:
                    yield part.commit(mid)
    finally:
        for part in parts.values():
            part.close()
    for part in parts.values():
        if not part.committed:
            part.audit_rows()  # raises: fewer rows came out than went in


class _Part:
    """One input file's output in progress: written under _tmp/, committed by renames."""

    def __init__(self, item: _Input, out: _Output, sample: dict, has_ids: bool):
        self.input, self.out, self.has_ids = item, out, has_ids
        ids = pa.schema([item.schema.field(c) for c in item.passthrough])
        self.schema = pa.schema([*ids, *[pa.field(c, pa.from_numpy_dtype(v.dtype))
                                         for c, v in sample.items()]])
        self.q_schema = pa.schema([*ids, pa.field("reason", pa.string())])
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
            q = batch.filter(pa.array(~ok)).select([*passthrough, REASON])
            q = q.rename_columns([*passthrough, "reason"]).cast(self.q_schema)
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
        log.info("%s: committed %d rows (%d quarantined)", name, self.counts["rows_out"],
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
