"""Rerunnable bulk scoring: one committed Parquet part per input file, a manifest, `_SUCCESS`.

Output layout under `score.output` (any `{date}` in the paths is the `--date` partition):

    part-<input stem>.parquet               ids + score_/pred_ columns, one per input file
    _quarantine/part-<input stem>.parquet   ids + `reason`, rows that were not scored
    _manifest/part-<input stem>.json        the commit record of a part (written last)
    _manifest.json                          all records and totals; then `_SUCCESS`, last of all

A part is written under `_tmp/` and renamed into place, then its record is written: a crash
leaves either no part or a whole one, and a rerun skips the parts that have a record.
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
    for p in data._expand_local(data._as_list(paths)):
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
    started, committed, records = time.perf_counter(), 0, []
    fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    for path, name in zip(files, names):
        if name in done:
            log.info("%s: committed by an earlier run, skipped", name)
            records.append(done[name])
            continue
        init_ray(min_cpus=job.score.num_actors * job.scaling.cpus_per_worker)
        records.append(_score_part(job, path, name, model_dir, meta, mid, out))
        committed += 1
        if fault_after and committed >= fault_after:
            os._exit(99)
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


def _score_part(job: JobConfig, path: str, name: str, model_dir: str, meta, mid: str,
                out: _Output) -> dict:
    from mlc_dist.losses import build_objective
    from mlc_dist.score import passthrough_columns, scored_dataset

    cfg = job.data.model_copy(update={"text_column": meta.text_column,
                                      "text_pair_column": meta.text_pair_column})
    raw = data.read_table([path], cfg, [cfg.text_column, *cfg.id_columns])
    schema = raw.schema().base_schema
    passthrough = passthrough_columns(job, meta, schema.names)
    inputs = job.data.feature_columns or [cfg.text_column]
    missing = [c for c in [*inputs, *passthrough] if c not in schema.names]
    if missing:
        raise data.DataError(f"{path}: missing column(s) {missing}; columns are {schema.names}")
    rows_in = raw.count()
    ds = scored_dataset(job, [path], model_dir, meta, raw, passthrough)
    # The output columns are whatever the model's objective writes (binary or per-category).
    objective = build_objective(meta.label_space, meta.extra.get("head", "linear"))
    sample = objective.columns(np.zeros((1, objective.num_outputs), np.float32),
                               np.asarray(meta.thresholds, dtype=np.float32))
    score_cols = [c for c in sample if c.startswith("score_")]
    ids = pa.schema([schema.field(c) for c in passthrough])
    out_schema = pa.schema([*ids, *[pa.field(c, pa.from_numpy_dtype(v.dtype))
                                    for c, v in sample.items()]])
    q_schema = pa.schema([*ids, pa.field("reason", pa.string())])
    tmp, q_tmp = out.path(TMP, f"{uuid.uuid4().hex}-{name}"), out.path(TMP, f"q-{name}")
    counts = {"rows_out": 0, "rows_quarantined": 0, "rows_truncated": 0}
    hashes, q_writer = [], None
    with pq.ParquetWriter(tmp, out_schema, filesystem=out.fs) as writer:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            reason = batch.column(REASON).to_numpy(zero_copy_only=False)
            ok = np.isin(reason, SCORED)
            scored = batch.filter(pa.array(ok)).select(out_schema.names).cast(out_schema)
            _audit_scores(scored, score_cols, path)
            writer.write_table(scored)
            if (~ok).any():
                q = batch.filter(pa.array(~ok)).select([*passthrough, REASON])
                q = q.rename_columns([*passthrough, "reason"]).cast(q_schema)
                q_writer = q_writer or pq.ParquetWriter(q_tmp, q_schema, filesystem=out.fs)
                q_writer.write_table(q)
            counts["rows_out"] += scored.num_rows
            counts["rows_quarantined"] += int((~ok).sum())
            counts["rows_truncated"] += int((reason == TRUNCATED).sum())
            if passthrough and job.data.id_columns:
                keys = zip(*(batch.column(c).to_pylist() for c in passthrough))
                hashes.append(np.fromiter((hash(k) for k in keys), np.int64, count=len(batch)))
    if q_writer is not None:
        q_writer.close()
    if counts["rows_out"] + counts["rows_quarantined"] != rows_in:
        raise AuditError(f"{path}: {rows_in} rows in but {counts['rows_out']} scored + "
                         f"{counts['rows_quarantined']} quarantined; nothing was committed")
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.int64)
    record = {"part": name, "input": path, "rows_in": rows_in, **counts,
              "duplicate_ids": int(len(all_hashes) - len(np.unique(all_hashes))),
              "model_id": mid, "checksum": out.sha256(tmp),
              "quarantine_checksum": out.sha256(q_tmp) if q_writer else None,
              "committed_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    if record["duplicate_ids"]:
        log.warning("%s: %d duplicate ids", path, record["duplicate_ids"])
    if q_writer is None and out.exists(QUARANTINE, f"{name}.parquet"):
        out.fs.delete_file(out.path(QUARANTINE, f"{name}.parquet"))  # a killed attempt's
    if q_writer is not None:
        out.fs.move(q_tmp, out.path(QUARANTINE, f"{name}.parquet"))
    out.fs.move(tmp, out.path(f"{name}.parquet"))
    out.write_atomic(json.dumps(record, indent=2).encode(), RECORDS, f"{name}.json")
    log.info("%s: committed %d rows (%d quarantined)", name, counts["rows_out"],
             counts["rows_quarantined"])
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
