"""Rerunnable bulk scoring: `run(job)` scores `score.input` into `score.output`, one committed
part per input file (commit.py), then the manifest and `_SUCCESS`.

Any `{date}` in the paths is the `--date` partition: YYYY-MM-DD, or `yesterday` / `today` in UTC,
resolved when the job runs. Consecutive pending files with one schema stream through one dataset,
so a drop of many files starts the scoring actors (imports, model load) once; a part commits as
soon as its rows out plus quarantined reach its rows in, counted beforehand.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time

import numpy as np
import pyarrow as pa

from mlc_dist import data, progress, storage
from mlc_dist.artifacts import ModelMeta, read_meta
from mlc_dist.config import JobConfig, JobConfigError
from mlc_dist.scoring.commit import (MANIFEST, QUARANTINE, RECORDS, SUCCESS, TMP, AuditError,
                                     InputFile, Output, Part, model_id, part_name, verify_record)
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


def _open_output(output: str, overwrite: bool) -> Output:
    out = Output(output)
    if overwrite and out.exists():
        out.fs.delete_dir(out.root)
    for sub in (RECORDS, QUARANTINE, TMP):
        out.fs.create_dir(out.path(sub))
    out.fs.delete_dir_contents(out.path(TMP))  # leftovers of a killed run: never committed
    return out


def run(job: JobConfig, date: str | None = None, overwrite: bool = False) -> dict:
    """Score `score.input` into `score.output`; returns the run's figures."""
    from mlc_dist.runtime import init_ray

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
    local_model = storage.local_copy(model_dir)
    meta, mid = read_meta(local_model), model_id(local_model)
    out = _open_output(output, overwrite)
    done = {name: verify_record(out, out.read_json(RECORDS, f"{name}.json"), mid, output)
            for name in names if out.exists(RECORDS, f"{name}.json")}
    if out.exists(SUCCESS) and len(done) < len(names):
        raise JobConfigError(f"{output}: complete for other inputs; rerun with --overwrite")
    for name in done:
        log.info("%s: committed by an earlier run, skipped", name)
    pending = [(path, name) for path, name in zip(files, names) if name not in done]
    started = time.perf_counter()
    if pending:
        init_ray(min_cpus=job.score.num_actors * job.scaling.cpus_per_worker)
    records = {**done, **_score_pending(job, pending, model_dir, meta, mid, out)}
    records = [records[name] for name in names]
    elapsed = time.perf_counter() - started
    totals = {k: sum(r[k] for r in records) for k in
              ("rows_in", "rows_out", "rows_quarantined", "rows_truncated", "duplicate_ids")}
    manifest = {"model_id": mid, "model": model_dir, "output": output, "date": date,
                "parts": records, **totals}
    out.write_atomic(json.dumps(manifest, indent=2).encode(), MANIFEST)
    out.write_atomic(b"", SUCCESS)
    new_rows = sum(r["rows_in"] for r in records if r["part"] not in done)
    return {"rows": totals["rows_out"], **totals, "parts_committed": len(records) - len(done),
            "parts_skipped": len(done), "seconds": elapsed,
            "rows_per_s": new_rows / max(elapsed, 1e-9), "output": output, "model": model_dir,
            "model_id": mid}


def _score_pending(job: JobConfig, pending: list[tuple[str, str]], model_dir: str,
                   meta: ModelMeta, mid: str, out: Output) -> dict[str, dict]:
    """Score and commit every pending file; {part name: its record}."""
    groups = list(_schema_groups(job, meta, pending))
    total_rows = sum(f.rows_in for group in groups for f in group)
    records, fault_after = {}, int(os.environ.get(FAULT_ENV, "0") or 0)
    with progress.scoring(total_rows, len(pending)) as display:
        for group in groups:
            for record in _score_group(job, group, model_dir, meta, mid, out, display):
                records[record["part"]] = record
                display.part_committed(record["part"], record["rows_out"],
                                       record["rows_quarantined"])
                if fault_after and len(records) >= fault_after:
                    os._exit(99)
    return records


def _schema_groups(job: JobConfig, meta: ModelMeta, pending: list[tuple[str, str]]):
    """Runs of consecutive pending files with one schema: each run is scored by one dataset
    (one actor pool, started once), so a drop of many files pays the actors' start once."""
    cfg = _data_config(job, meta)
    group: list[InputFile] = []
    for path, name in pending:
        raw = data.read_table([path], cfg, [cfg.text_column, *cfg.id_columns])
        inputs = job.data.feature_columns or [cfg.text_column]
        schema = raw.schema()
        # An empty CSV/TSV/JSONL file streams no block, so Ray knows no schema: the columns asked.
        schema = schema.base_schema if schema is not None else pa.schema(
            [(c, pa.string()) for c in dict.fromkeys([*inputs, *cfg.id_columns])])
        passthrough = passthrough_columns(job, meta, schema.names)
        missing = [c for c in [*inputs, *passthrough] if c not in schema.names]
        if missing:
            raise data.DataError(f"{path}: missing column(s) {missing}; columns are "
                                 f"{schema.names}")
        item = InputFile(path, name, schema, passthrough, raw.count())
        # An empty file streams nothing, so its schema (often all-null types) splits no run.
        ref = next((g.schema for g in group if g.rows_in), None)
        if item.rows_in and ref is not None and not schema.equals(ref):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _data_config(job: JobConfig, meta: ModelMeta):
    return job.data.model_copy(update={"text_column": meta.text_column,
                                       "text_pair_column": meta.text_pair_column})


def _path_key(path: str) -> str:
    """A file's path as Ray Data's `path` column gives it: no scheme, absolute when local."""
    if "://" in path:
        return path.split("://", 1)[1]
    return os.path.abspath(path)


def _score_group(job: JobConfig, group: list[InputFile], model_dir: str, meta: ModelMeta,
                 mid: str, out: Output, display):
    """Score files of one schema in one streaming dataset; yield each part's record right after
    its commit. A part commits when its rows out + quarantined reach its rows in."""
    cfg = _data_config(job, meta)
    streamed = [f for f in group if f.rows_in]
    # The output columns are whatever the model's head writes (binary or per-category).
    sample = meta.outputs.columns(np.zeros((1, meta.outputs.num_outputs), np.float32),
                                  meta.thresholds)
    parts = {_path_key(f.path): Part(f, out, sample, bool(job.data.id_columns)) for f in group}
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
