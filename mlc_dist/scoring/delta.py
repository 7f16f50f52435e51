"""The Delta Lake side of the commit protocol (`score.output_format: delta`): the output folder is
a Delta table partitioned by `part` (one partition per input file), written with delta-rs.

Each part's commit is one Delta transaction, a predicate overwrite `part = '<name>'` (replaceWhere):
it atomically replaces that part's rows, so replaying it after a crash replaces rather than
duplicates. Withdrawn and stray parts go in one predicate delete. The lease, the records in
`_manifest/`, `_manifest.json` (which names the table version it publishes), the quarantine files
in `_quarantine/` and `_SUCCESS` stay commit.py's and manifest.py's. Owns no scoring.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from mlc_dist import data, storage

#: The partition column: the part name of the input file a row came from.
PART = "part"
LOG = "_delta_log"


def storage_options(uri: str) -> dict | None:
    """delta-rs reads region and credentials from the AWS_* environment itself; the endpoint is
    passed as pyarrow and boto3 find it (AWS_ENDPOINT_URL_S3 first), and a plain http endpoint
    (moto, MinIO) must be allowed explicitly."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")
    if not uri.startswith("s3://") or not endpoint:
        return None
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": str(endpoint.startswith("http://"))
            .lower()}


def table_uri(output: str) -> str:
    return output.rstrip("/") if storage.is_uri(output) else os.path.abspath(output)


def exists(out) -> bool:
    return out.exists(LOG)


def _table(out, version: int | None = None):
    from deltalake import DeltaTable

    return DeltaTable(table_uri(out.uri), version=version,
                      storage_options=storage_options(out.uri))


def part_files(out, version: int | None = None) -> dict[str, list[str]]:
    """{part name: sorted data files} of the table's snapshot (the latest, or `version`)."""
    if version is None and not exists(out):
        return {}
    actions = pa.table(_table(out, version).get_add_actions(flatten=True))
    files: dict[str, list[str]] = {}
    for name, path in zip(actions.column(f"partition.{PART}").to_pylist(),
                          actions.column("path").to_pylist()):
        files.setdefault(name, []).append(path)
    return {name: sorted(paths) for name, paths in files.items()}


def commit_part(out, name: str, tmp: str) -> dict:
    """The part's scored rows (the run's temp Parquet file) replace the part's rows in one
    transaction; returns what its record keeps: the table version and the part's data files."""
    assert all(c.isalnum() or c in "._=-" for c in name), name  # part_name: safe in a predicate
    with out.fs.open_input_file(tmp) as f:
        part = pq.ParquetFile(f)
        if PART in part.schema_arrow.names:
            raise data.DataError(f"{out.uri}: the input has a column named {PART!r}, the Delta "
                             "output's partition column; rename it or use "
                             "score.output_format: parquet")
        schema = part.schema_arrow.append(pa.field(PART, pa.string()))
        # Streamed batch by batch: a part never has to fit in the driver's memory.
        batches = (b.append_column(PART, pa.array([name] * b.num_rows, pa.string()))
                   for b in part.iter_batches())
        _write(out, name, pa.RecordBatchReader.from_batches(schema, batches))
    version = _table(out).version()
    return {"delta_version": version, "delta_files": part_files(out, version).get(name, [])}


def _write(out, name: str, rows: pa.RecordBatchReader) -> None:
    from deltalake import write_deltalake

    write_deltalake(table_uri(out.uri), rows, mode="overwrite", partition_by=[PART],
                    predicate=f"{PART} = '{name}'", storage_options=storage_options(out.uri))


def delete_parts(out, names: list[str]) -> None:
    """One transaction removing the rows of these parts (withdrawn inputs, strays)."""
    if names and exists(out):
        listed = ", ".join(f"'{n}'" for n in sorted(names))
        _table(out).delete(f"{PART} IN ({listed})")


def version(out) -> int | None:
    return _table(out).version() if exists(out) else None


def read(out, manifest: dict, error) -> pa.Table:
    """The rows of the table version the manifest publishes, after checking that its files of
    each listed part are the ones that part's record committed (and no other part is there)."""
    files = part_files(out, manifest["delta_version"])
    listed = {r["part"]: r for r in manifest["parts"]}
    for name, record in listed.items():
        if files.get(name, []) != record["delta_files"]:
            raise error(f"{out.uri}: part {name} in Delta version {manifest['delta_version']} "
                        "differs from its manifest record; the output was changed after its run")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise error(f"{out.uri}: Delta version {manifest['delta_version']} holds parts the "
                    f"manifest does not list: {extra[:5]}")
    table = _table(out, manifest["delta_version"]).to_pyarrow_table()
    return table.drop_columns([PART])
