"""The manifest side of the commit protocol: what a reader may serve, and what a rerun keeps.

`read_scores` serves exactly the parts a complete manifest lists (`_SUCCESS` holds the manifest's
sha256), each checked against its checksum. `reconcile` decides, under the run's lease, which
committed parts still stand (same input identity, same model id) and removes the rest: records
first, then files, so a record never points at a missing part. Owns no scoring.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlc_dist import data
from mlc_dist.config import JobConfigError
from mlc_dist.scoring import delta, faults
from mlc_dist.scoring.commit import (MANIFEST, QUARANTINE, RECORDS, SUCCESS, TMP, AuditError,
                                     Output, verify_record)
from mlc_dist.scoring.fingerprint import same_file
from mlc_dist.scoring.lease import LEASE

log = logging.getLogger(__name__)


def read_manifest(output: str) -> dict:
    """The manifest of a complete output; raises for an unfinished one or one being rewritten."""
    out = Output(output)
    if not out.exists(SUCCESS):
        raise data.DataError(f"{output}: no {SUCCESS} marker; the scoring job has not finished")
    marker = out.read_bytes(SUCCESS).decode().strip()
    content = out.read_bytes(MANIFEST)
    if marker and hashlib.sha256(content).hexdigest() != marker:
        raise data.DataError(f"{output}: {MANIFEST} does not match {SUCCESS}; a run is "
                             "rewriting this output, read it when that run has finished")
    return json.loads(content)


def is_complete(output: str) -> bool:
    """True only when a run finished: `_SUCCESS` written last, naming the current manifest."""
    try:
        read_manifest(output)
    except (data.DataError, OSError):
        return False
    return True


def read_scores(output: str) -> pa.Table:
    """The scores of a complete output: exactly the parts its manifest lists, each verified
    against its checksum (AuditError otherwise); files the manifest does not list are ignored."""
    out = Output(output)
    content = read_manifest(output)
    if delta.exists(out):  # a Delta table: the version the manifest publishes
        if content.get("format") != "delta":
            raise AuditError(f"{output}: a Delta table whose manifest is not a Delta one")
        return delta.read(out, content, AuditError)
    tables = []
    for record in content["parts"]:
        content = out.read_bytes(f"{record['part']}.parquet")  # read once: checked = parsed
        if hashlib.sha256(content).hexdigest() != record["checksum"]:
            raise AuditError(f"{out.path(record['part'])}.parquet: checksum differs from the "
                             "manifest; the output was changed after its run")
        tables.append(pq.read_table(pa.BufferReader(content)))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def write_manifest(out: Output, manifest: dict) -> str:
    """`_manifest.json` in place; returns its sha256 for `_SUCCESS`."""
    content = json.dumps(manifest, indent=2).encode()
    out.write_atomic(content, MANIFEST)
    faults.point("manifest_written")
    return hashlib.sha256(content).hexdigest()


def write_success(out: Output, manifest_sha256: str) -> None:
    faults.point("before_success")
    out.write_atomic(manifest_sha256.encode(), SUCCESS)


def unpublish(out: Output) -> None:
    """Before any change to a complete output: readers then refuse it until the next `_SUCCESS`."""
    out.delete(SUCCESS)


def reconcile(out: Output, names: list[str], identities: dict[str, dict], mid: str) -> dict:
    """{part name: record} of committed parts that still stand; removes withdrawn and changed
    parts and parts without a record. Raises when a part was scored by another model id."""
    records = {n[:-len(".json")]: out.read_json(RECORDS, n) for n in out.listing(RECORDS)
               if n.endswith(".json")}
    formats = {r.get("format", "parquet") for r in records.values()}
    if delta.exists(out):
        formats.add("delta")
    if formats - {out.format}:
        raise JobConfigError(f"{out.uri}: holds {sorted(formats)[0]} output; this run writes "
                             f"score.output_format {out.format}. Rerun with --overwrite to "
                             "score everything again in the new format")
    other = sorted(n for n, r in records.items() if n in names and r["model_id"] != mid)
    if other:
        raise JobConfigError(
            f"{out.uri}: {other[0]} (and {len(other) - 1} more) was scored with model id "
            f"{records[other[0]]['model_id']}; this run's is {mid} (the export or precision, "
            "max_chars, on_long_text differ). Rerun with --overwrite to score everything again")
    done, removed = {}, []
    table_parts = delta.part_files(out) if out.format == "delta" else None
    for name, record in records.items():
        if name not in names:
            removed.append((name, "its input was withdrawn"))
        elif not same_file(record.get("input_identity"), identities[name]):
            removed.append((name, "its input changed"))
        else:
            done[name] = verify_record(out, record, table_parts)
    # Delta: partitions no record lists (a run killed between its commit and its record).
    strays = sorted(set(table_parts or ()) - set(records))
    strays += [n[:-len(".parquet")] for n in out.listing() if n.startswith("part-")
              and n.endswith(".parquet") and n[:-len(".parquet")] not in records]
    strays += [n[:-len(".parquet")] for n in out.listing(QUARANTINE) if n.endswith(".parquet")
               and n[:-len(".parquet")] not in records and n[:-len(".parquet")] not in strays]
    if removed or strays:
        unpublish(out)
    for name, why in removed:
        log.info("%s: removed from the output, %s", name, why)
        out.delete(RECORDS, f"{name}.json")  # the record first: never a record without its part
    if out.format == "delta":
        delta.delete_parts(out, [n for n, _ in removed] + strays)
    for name in [n for n, _ in removed] + strays:
        out.delete(f"{name}.parquet")
        out.delete(QUARANTINE, f"{name}.parquet")
    if strays:
        log.warning("%s: removed %d part file(s) no record listed (a killed run's): %s",
                    out.uri, len(strays), strays[:5])
    return {"done": done, "strays": strays,
            "removed": [n for n, why in removed if why == "its input was withdrawn"],
            "changed": [n for n, why in removed if why == "its input changed"]}


def clear(out: Output) -> None:
    """--overwrite, under the lease: `_SUCCESS`, the manifest and the records go first (a crash
    midway leaves parts without records, which the next run removes), then everything else."""
    unpublish(out)
    out.delete(MANIFEST)
    for name in out.listing(RECORDS):
        out.delete(RECORDS, name)
    faults.point("overwrite")
    infos = out.fs.get_file_info(pafs.FileSelector(out.root, allow_not_found=True))
    for info in infos:
        if info.base_name == LEASE:
            continue
        if info.type == pafs.FileType.Directory:
            out.fs.delete_dir(info.path)
        else:
            out.fs.delete_file(info.path)


def prepare(out: Output) -> None:
    """The folders a run writes to; temp files of earlier (dead: we hold the lease) runs go."""
    for sub in (RECORDS, QUARANTINE, TMP):
        out.fs.create_dir(out.path(sub))
    for info in out.fs.get_file_info(pafs.FileSelector(out.path(TMP), allow_not_found=True)):
        if info.base_name != out.run_id:
            if info.type == pafs.FileType.Directory:
                out.fs.delete_dir(info.path)
            else:
                out.fs.delete_file(info.path)
    out.fs.create_dir(out.path(TMP, out.run_id))


def finish(out: Output) -> None:
    """The run's own temp folder, once it is published."""
    if out.exists(TMP, out.run_id):
        out.fs.delete_dir(out.path(TMP, out.run_id))
