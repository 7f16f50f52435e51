"""Rerunnable bulk scoring: `run(job)` scores `score.input` into `score.output` under the output's
lease (lease.py), one committed part per input file (commit.py), then the manifest, the quarantine
gate and `_SUCCESS` (manifest.py). A rerun keeps the parts whose input and model are unchanged.

Any `{date}` in the paths is the `--date` partition: YYYY-MM-DD, or `yesterday` / `today` in UTC,
resolved when the job runs. Consecutive pending files with one schema stream through one dataset,
so a drop of many files starts the scoring actors (imports, model load) once; a part commits as
soon as its rows out plus quarantined reach its rows in, counted beforehand.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlc_dist import data, progress, storage
from mlc_dist.artifacts import ModelMeta, read_meta
from mlc_dist.config import JobConfig, JobConfigError
from mlc_dist.data import textspec
from mlc_dist.scoring import delta, manifest, parity
from mlc_dist.scoring.commit import (MANIFEST, QUARANTINE, SUCCESS, AuditError, InputFile, Output,
                                     Part, part_name)
from mlc_dist.scoring.fingerprint import (IdSet, file_identity, id_digests, model_id,
                                          scoring_settings)
from mlc_dist.scoring.lease import Lease
from mlc_dist.scoring.pipeline import passthrough_columns, scored_dataset

log = logging.getLogger(__name__)
FAULT_ENV = "MLC_DIST_FAULT_AFTER_PARTS"  # tests: os._exit right after the n-th committed part


#: --date words a scheduler can pass as they are: resolved to UTC dates when the job runs.
DATE_WORDS = {"today": 0, "yesterday": 1}


def resolve_date(date: str, today: dt.date | None = None) -> str:
    """`--date` as YYYY-MM-DD: a date as given, or `today` / `yesterday` in UTC (`today` defaults
    to the UTC date now; tests pass it)."""
    if date in DATE_WORDS:
        today = today or dt.datetime.now(dt.timezone.utc).date()
        return (today - dt.timedelta(days=DATE_WORDS[date])).isoformat()
    # fromisoformat alone also takes 20240501 and 2024-W18-3: only YYYY-MM-DD names a partition.
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        try:
            return dt.date.fromisoformat(date).isoformat()
        except ValueError:  # 2024-13-01
            pass
    raise JobConfigError(f"--date {date!r}: expected YYYY-MM-DD, today or yesterday (UTC)")


def substitute_date(value, date: str | None, key: str, today: dt.date | None = None):
    if value is None:
        return None
    if isinstance(value, list):
        return [substitute_date(v, date, key, today) for v in value]
    if "{date}" not in value:
        return value
    if date is None:
        raise JobConfigError(f"{key}: {value!r} has a {{date}} partition; pass --date YYYY-MM-DD "
                             "(or yesterday / today)")
    return value.replace("{date}", resolve_date(date, today))


def input_files(paths, fmt: str = "auto") -> list[str]:
    """Files to score, in order (data.expand_paths: globs, folders listed, "." and "_" names
    skipped); a file of unknown type is refused by name before anything is scored."""
    files = data.expand_paths(paths)
    for f in files:
        data.file_format(f, fmt)
    return files


def _part_names(files: list[str]) -> list[str]:
    names = [part_name(f) for f in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise data.DataError(f"input files share a part name {clash}: rename them, or score them "
                             "into separate outputs")
    return names


class QuarantineGateFailed(AuditError):
    """More rows quarantined than score.max_quarantine_fraction allows (exit 3, no _SUCCESS)."""


def run(job: JobConfig, date: str | None = None, overwrite: bool = False) -> dict:
    """Score `score.input` into `score.output` under the output's lease; returns the figures."""
    if date is not None:
        # Once: input, output and the manifest then name one day even across midnight.
        date = resolve_date(date)
    inputs = substitute_date(job.score.input, date, "score.input")
    output = substitute_date(job.score.output, date, "score.output")
    if not inputs or not output:
        raise JobConfigError("score.input and score.output must be set")
    files = input_files(inputs, job.data.format)
    names = _part_names(files)
    model_dir = job.score_model  # the actors load it themselves (storage.local_copy per node)
    if not storage.is_uri(model_dir):
        model_dir = os.path.realpath(model_dir)  # one version of a swapped export (publish_dir)
    local_model = storage.local_copy(model_dir)
    digest = storage.export_digest(local_model)
    meta = read_meta(local_model)
    # ONNX backends: the graph scores are made with is part of the model's identity (and
    # onnx-int8's parity gate runs here, before the lease: a refused graph exits 2).
    job = parity.resolve_backend(job, model_dir)
    backend = parity.prepare_backend(job, model_dir)
    settings = {**scoring_settings(job.score), **(backend and {
        "backend": backend["backend"], "graph_sha256": backend["graph_sha256"]} or {})}
    mid = model_id(local_model, settings, digest)
    lease = Lease(output, job.score.lease_timeout_s).acquire()
    try:
        summary = _run_locked(job, date, files, names, (model_dir, meta, mid, digest),
                              Output(output, lease.run_id, job.score.output_format), overwrite,
                              lease)
    except Exception:
        lease.release()
        raise
    except BaseException:  # a kill (faults.Crash in tests): the lease stays, as it would
        lease.stop_heartbeat()
        raise
    lease.release()
    return summary


def _run_locked(job: JobConfig, date, files, names, model, out: Output, overwrite: bool,
                lease: Lease) -> dict:
    from mlc_dist.runtime import init_ray

    model_dir, meta, mid, digest = model
    if overwrite:
        manifest.clear(out)
    manifest.prepare(out)
    # Identities before counting: a change after this point fails the part's commit.
    identities = {name: file_identity(path) for path, name in zip(files, names)}
    plan = manifest.reconcile(out, names, identities, mid)
    done = plan["done"]
    for name in done:
        log.info("%s: committed by an earlier run for the same input and model, skipped", name)
    pending = [(path, name) for path, name in zip(files, names) if name not in done]
    started, first_rows = time.perf_counter(), {}
    unchanged = not pending and not plan["removed"] and not plan["strays"]  # changed: pending
    if unchanged and manifest.is_complete(out.uri):
        committed = {}
    else:
        manifest.unpublish(out)
        if pending:
            init_ray(min_cpus=(job.score.num_actors or 1) * job.scaling.cpus_per_worker,
                     dashboard=False)  # no Ray Train here
        committed = _score_pending(job, pending, identities, (model_dir, meta, mid, digest), out,
                                   lease.check, first_rows)
    records = [{**done, **committed}[name] for name in names]
    elapsed = time.perf_counter() - started
    totals = {k: sum(r[k] for r in records) for k in
              ("rows_in", "rows_out", "rows_quarantined", "rows_truncated", "duplicate_ids")}
    if committed or not unchanged or not manifest.is_complete(out.uri):
        _publish(job, out, lease, {"model_id": mid, "model": model_dir, "output": out.uri,
                                   "backend": parity.prepare_backend(job, model_dir)
                                   or {"backend": "torch"},
                                   "date": date, "run_id": out.run_id, "parts": records,
                                   **totals})
    manifest.finish(out)
    new_rows = sum(r["rows_in"] for r in committed.values())
    return {"rows": totals["rows_out"], **totals, "parts_committed": len(committed),
            "parts_skipped": len(done), "parts_removed": len(plan["removed"]),
            "parts_rescored": len(plan["changed"]),
            "strays_removed": len(plan["strays"]), "seconds": elapsed,
            # Ray's start (when not running), the actors' start and model load, the first window.
            "seconds_to_first_row": first_rows["at"] - started if first_rows else None,
            "rows_per_s": new_rows / max(elapsed, 1e-9), "output": out.uri, "model": model_dir,
            "model_id": mid, "run_id": out.run_id}


def _publish(job: JobConfig, out: Output, lease: Lease, content: dict) -> None:
    """The manifest, the quarantine gate, then `_SUCCESS` naming the manifest."""
    lease.check()
    content = {**content, "format": out.format}
    if out.format == "delta":  # the table version readers are to read: this run's last commit
        content["delta_version"] = delta.version(out)
    sha = manifest.write_manifest(out, content)
    limit = job.score.max_quarantine_fraction
    fraction = content["rows_quarantined"] / max(content["rows_in"], 1)
    if fraction > limit:
        raise QuarantineGateFailed(
            f"{out.uri}: {content['rows_quarantined']} of {content['rows_in']} rows quarantined "
            f"({fraction:.1%}), over score.max_quarantine_fraction {limit}; no {SUCCESS} written "
            f"(reasons in {QUARANTINE}/, counts per part in {MANIFEST})")
    lease.check()
    manifest.write_success(out, sha)


def _score_pending(job: JobConfig, pending: list[tuple[str, str]], identities: dict,
                   model: tuple, out: Output, check, first_rows: dict) -> dict[str, dict]:
    """Score and commit every pending file; {part name: its record}. `first_rows["at"]`: when
    the first scored rows reached the driver (perf_counter)."""
    meta = model[1]
    groups = list(_schema_groups(job, meta, pending, identities))
    total_rows = sum(f.rows_in for group in groups for f in group)
    records, fault_after = {}, int(os.environ.get(FAULT_ENV, "0") or 0)
    with progress.scoring(total_rows, len(pending)) as display:
        for group in groups:
            for record in _score_group(job, group, model, out, display, check, first_rows):
                records[record["part"]] = record
                display.part_committed(record["part"], record["rows_out"],
                                       record["rows_quarantined"])
                if fault_after and len(records) >= fault_after:
                    os._exit(99)
    return records


def _schema_groups(job: JobConfig, meta: ModelMeta, pending: list[tuple[str, str]],
                   identities: dict):
    """Runs of consecutive pending files with one schema: each run is scored by one dataset
    (one actor pool, started once), so a drop of many files pays the actors' start once."""
    cfg = _data_config(job, meta)
    group: list[InputFile] = []
    for path, name in pending:
        # The columns as read: the check below names a missing one (not the composed text).
        raw = data.read_table([path], cfg, [*textspec.input_columns(cfg), *cfg.id_columns],
                              compose_text=False)
        inputs = job.data.feature_columns or textspec.input_columns(cfg)
        schema = raw.schema()
        # An empty CSV/TSV/JSONL file streams no block, so Ray knows no schema: the columns asked.
        schema = schema.base_schema if schema is not None else pa.schema(
            [(c, pa.string()) for c in dict.fromkeys([*inputs, *cfg.id_columns])])
        passthrough = passthrough_columns(job, meta, schema.names)
        missing = [c for c in [*inputs, *passthrough] if c not in schema.names]
        if missing:
            raise data.DataError(f"{path}: missing column(s) {missing}; columns are "
                                 f"{schema.names}")
        rows_in, ids_in = _count(path, cfg, raw, passthrough if job.data.id_columns else [])
        item = InputFile(path, name, schema, passthrough, rows_in, identities[name], ids_in)
        # An empty file streams nothing, so its schema (often all-null types) splits no run.
        ref = next((g.schema for g in group if g.rows_in), None)
        if item.rows_in and ref is not None and not schema.equals(ref):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _count(path: str, cfg, raw, id_columns: list[str]) -> tuple[int, dict]:
    """Rows of one input file, and the fingerprint of its ids when the job declares them.
    Parquet is read here (id columns only: no Ray tasks); other formats through Ray Data's
    reader, which is what the scoring stream sees."""
    if not id_columns:
        return raw.count(), {}
    ids = IdSet()
    if data.detect_format([path], cfg.format) == "parquet":
        fs, inner = storage.filesystem(path)
        batches = [pq.read_table(inner, columns=id_columns, filesystem=fs)]
    else:
        batches = raw.select_columns(id_columns).iter_batches(batch_size=None,
                                                              batch_format="pyarrow")
    for batch in batches:
        ids.add(id_digests(batch, id_columns))
    summary = ids.summary()
    return summary["ids"], summary


def _data_config(job: JobConfig, meta: ModelMeta):
    return meta.data_config(job.data)


def _path_key(path: str) -> str:
    """A file's path as Ray Data's `path` column gives it: no scheme, absolute when local."""
    if "://" in path:
        return path.split("://", 1)[1]
    return os.path.abspath(path)


def _score_group(job: JobConfig, group: list[InputFile], model: tuple, out: Output, display,
                 check, first_rows: dict):
    """Score files of one schema in one streaming dataset; yield each part's record right after
    its commit. A part commits when its rows out + quarantined reach its rows in."""
    model_dir, meta, mid, digest = model
    cfg = _data_config(job, meta)
    streamed = [f for f in group if f.rows_in]
    # The output columns are whatever the model's head writes (binary or per-category).
    sample = meta.outputs.columns(np.zeros((1, meta.outputs.num_outputs), np.float32),
                                  meta.thresholds)
    parts = {_path_key(f.path): Part(f, out, sample, bool(job.data.id_columns), check)
             for f in group}
    for part in list(parts.values()):
        if part.input.rows_in == 0:  # nothing will stream for it
            yield part.commit(mid)
    if not streamed:
        return
    paths = [f.path for f in streamed]
    raw = data.read_table(paths, cfg, [*textspec.input_columns(cfg), *cfg.id_columns])
    ds = scored_dataset(job, paths, model_dir, meta, raw, [*streamed[0].passthrough, data.PATH],
                        export_digest=digest)
    ds.context.execution_options.preserve_order = True  # parts complete, and commit, in order
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            first_rows.setdefault("at", time.perf_counter())
            of_row = batch.column(data.PATH).to_numpy(zero_copy_only=False)
            for key in dict.fromkeys(of_row):
                part = parts.get(key)
                if part is None:
                    raise AuditError(f"scored rows of {key!r}, which is not one of the inputs "
                                     f"{paths}; nothing more was committed")
                before = part.counts["rows_quarantined"]
                part.add(batch.filter(pa.array(of_row == key)))
                display.rows_done(int((of_row == key).sum()),
                                  part.counts["rows_quarantined"] - before)
                if part.done:
                    yield part.commit(mid)
    finally:
        for part in parts.values():
            part.close()
    for part in parts.values():
        if not part.committed:
            part.audit_rows()  # raises: fewer rows came out than went in
