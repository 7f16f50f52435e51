"""The nightly commit protocol with input and output on the object store (moto S3) and scoring on
the multi-node cluster: a run killed mid-commit, a rerun while a second writer is refused, changed
inputs, the quarantine gate. One sequence per output format (Parquet parts, a Delta table)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mlc_dist.demo import generate
from mlc_dist.labels import LabelSpace

from .conftest import REPO

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
AWS = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _put(fs, path, rows, seed, nulls=0):
    table = generate(rows, seed=seed).select(["id", "comment_text"])
    texts = table.column("comment_text").to_pylist()
    table = table.set_column(1, "comment_text",
                             pa.array([None] * nulls + texts[nulls:], pa.string()))
    pq.write_table(table, path, filesystem=fs)
    return table


def _ids(tables, quarantined=()):
    return sorted(i for t in tables for i in t.column("id").to_pylist() if i not in quarantined)


def _cli(cluster, job, *args, env=None, wait=True):
    proc = subprocess.Popen([sys.executable, "-m", "mlc_dist.cli", "score", str(job), *args],
                            env=cluster.client_env(**(env or {})), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _lease_pid(fs, path: str) -> int | None:
    """The lease holder's pid, or None while there is none. The S3 stand-in (moto) can hand a
    poll a torn read while a heartbeat replaces the object (seen once in CI: the new JSON with
    the old one's last byte); real S3 replaces objects atomically. Such a read is polled again."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        return json.loads(fs.open_input_stream(path).read())["pid"]
    except json.JSONDecodeError:
        return None


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_commit_protocol_on_the_object_store(cluster, tiny_bert, tmp_path, monkeypatch, fmt):
    from mlc_dist import read_scores
    from mlc_dist.cli import app  # imported before the race below: the loser answers at once
    from tests.conftest import export_tiny_model

    for key in AWS:
        monkeypatch.setenv(key, cluster.env[key])
    fs = pafs.S3FileSystem(endpoint_override=cluster.env["AWS_ENDPOINT_URL"],
                           region=cluster.env["AWS_REGION"],
                           access_key=cluster.env["AWS_ACCESS_KEY_ID"],
                           secret_key=cluster.env["AWS_SECRET_ACCESS_KEY"])
    prefix = f"{cluster.env['MLC_DIST_BUCKET']}/commit-{uuid.uuid4().hex[:8]}"
    inputs = {f"d{i}": _put(fs, f"{prefix}/in/d{i}.parquet", rows, 30 + i, nulls)
              for i, (rows, nulls) in enumerate([(20, 1), (15, 0), (15, 0)])}
    null_ids = {inputs["d0"].column("id")[0].as_py()}
    model = export_tiny_model(tmp_path / "export", tiny_bert, LABELS, "comment_text")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "run": {"name": "commit-s3"}, "data": {"id_columns": ["id"]},
        "score": {"input": f"s3://{prefix}/in/", "output": f"s3://{prefix}/out",
                  # batch_size 1: a row's scores are bit-identical whatever else a run scored.
                  "model": model, "window_rows": 16, "batch_size": 1,
                  "max_quarantine_fraction": 0.5, "output_format": fmt}}))
    out = f"s3://{prefix}/out"

    # Killed right after the second part became visible, before its record.
    code, _, err = _cli(cluster, job, env={"MLC_DIST_FAULT_AT": "part_visible:2"})
    assert code == 99, err[-3000:]
    with pytest.raises(Exception, match="_SUCCESS"):
        read_scores(out)

    # The rerun takes the dead run's lease (same host, process gone); a second writer meanwhile
    # exits 2 naming the holder.
    rerun = _cli(cluster, job, wait=False)
    try:
        deadline = time.monotonic() + 300
        while _lease_pid(fs, f"{prefix}/out/_lease.json") != rerun.pid:
            assert rerun.poll() is None and time.monotonic() < deadline, rerun.communicate()
            time.sleep(0.1)
        second = CliRunner().invoke(app, ["score", str(job)])
        assert second.exit_code == 2 and f"pid {rerun.pid}" in second.output, second.output
        stdout, stderr = rerun.communicate(timeout=600)
    finally:
        if rerun.poll() is None:
            rerun.kill()
    assert rerun.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert (summary["parts_committed"], summary["parts_skipped"], summary["strays_removed"]) == \
        (2, 1, 1)
    assert _ids([read_scores(out)]) == \
        _ids(inputs.values(), null_ids)

    # Replaced, withdrawn and added inputs between runs.
    inputs["d1"] = _put(fs, f"{prefix}/in/d1.parquet", 15, 50)
    fs.delete_file(f"{prefix}/in/d2.parquet")
    del inputs["d2"]
    inputs["d3"] = _put(fs, f"{prefix}/in/d3.parquet", 12, 51)
    code, stdout, err = _cli(cluster, job)
    assert code == 0, err[-3000:]
    summary = json.loads(stdout)
    assert (summary["parts_committed"], summary["parts_skipped"], summary["parts_removed"]) == \
        (2, 1, 1)
    served = read_scores(out)
    assert _ids([served]) == _ids(inputs.values(), null_ids)

    # A clean run of the same drop, gated at 0 quarantined rows: exit 3, no _SUCCESS; its
    # manifest's parts hold exactly the served output's ids and scores.
    code, _, err = _cli(cluster, job, "--set", f"score.output=s3://{prefix}/clean",
                        "--set", "score.max_quarantine_fraction=0")
    assert code == 3 and "over score.max_quarantine_fraction 0" in err, err[-3000:]
    assert fs.get_file_info(f"{prefix}/clean/_SUCCESS").type == pafs.FileType.NotFound
    manifest = json.loads(fs.open_input_stream(f"{prefix}/clean/_manifest.json").read())
    if fmt == "delta":  # the table version the manifest names, read by delta-rs from S3
        from deltalake import DeltaTable

        from mlc_dist.scoring.delta import storage_options
        clean = DeltaTable(f"s3://{prefix}/clean", version=manifest["delta_version"],
                           storage_options=storage_options("s3://")).to_pyarrow_table()
        assert sorted(set(clean.column("part").to_pylist())) == ["part-d0", "part-d1", "part-d3"]
    else:
        clean = pa.concat_tables(pq.read_table(f"{prefix}/clean/{p['part']}.parquet",
                                               filesystem=fs) for p in manifest["parts"])
    cols = ["id", *[f"score_{n}" for n in LABELS.names]]
    assert sorted(zip(*(served.column(c).to_pylist() for c in cols))) == \
        sorted(zip(*(clean.column(c).to_pylist() for c in cols)))
