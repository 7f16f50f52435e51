"""The nightly output's commit protocol on local disk, on a real local Ray cluster: a crash at
every step of a part's commit, changed inputs and models between runs, one writer per output,
the quarantine gate through the CLI; each for both output formats (Parquet parts, a Delta table).
Runs in-process (one cluster); crashes are faults.Crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

import mlc_dist
from mlc_dist import scoring
from mlc_dist.cli import app
from mlc_dist.config import JobConfigError, validate_job
from mlc_dist.demo import generate
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import delta
from mlc_dist.scoring.commit import AuditError, Output

from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model_dir(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                             "comment_text")


def drop_file(path, rows, seed, nulls=0):
    table = generate(rows, seed=seed).select(["id", "comment_text"])
    if nulls:  # the first rows' text null: quarantined as null_text
        texts = table.column("comment_text").to_pylist()
        table = table.set_column(1, "comment_text",
                                 pa.array([None] * nulls + texts[nulls:], pa.string()))
    pq.write_table(table, path)
    return path


@pytest.fixture(params=["parquet", "delta"])
def fmt(request):
    return request.param


def parts_on_disk(out, fmt) -> list[str]:
    """The parts physically in the output: part files, or the Delta table's partitions."""
    if fmt == "delta":
        return sorted(delta.part_files(Output(str(out))))
    return sorted(p.name[:-len(".parquet")] for p in out.glob("part-*.parquet"))


def add_stray(out, fmt) -> None:
    """Rows no record lists, as a killed run (or someone) leaves them: copies of part-d0's."""
    if fmt == "delta":
        rows = pq.read_table(next((out / "part=part-d0").glob("*.parquet")))
        rows = rows.append_column("part", pa.array(["part-stray"] * rows.num_rows))
        write_deltalake(str(out), rows, mode="append", partition_by=["part"])
    else:
        pq.write_table(pq.read_table(out / "part-d0.parquet"), out / "part-stray.parquet")


def job(model_dir, inputs, output, **score):
    return validate_job({"run": {"name": "commit-test"}, "data": {"id_columns": ["id"]},
                         "score": {"input": str(inputs), "output": str(output),
                                   # One row per forward pass: a row's scores are then
                                   # bit-identical whatever else its run scored.
                                   "model": str(model_dir), "window_rows": 16, "batch_size": 1,
                                   "max_quarantine_fraction": 0.5, **score}})


def id_scores(table: pa.Table) -> list[tuple]:
    """The id -> scores multiset, exactly (sorted tuples of Python floats)."""
    cols = ["id", *[f"score_{n}" for n in LABELS.names]]
    return sorted(zip(*(table.column(c).to_pylist() for c in cols)))


def crash_at(step: str, nth: int = 1):
    from mlc_dist.scoring import faults

    def hook(name, count):
        if name == step and count == nth:
            raise faults.Crash(step)
    return hook


@pytest.fixture
def hook():
    from mlc_dist.scoring import faults

    faults.reset()
    yield faults
    faults.HOOK = None
    faults.reset()


def test_a_crash_at_every_commit_step_then_a_rerun_equals_a_clean_run(model_dir, tmp_path,
                                                                      ray_cluster, hook, fmt):
    faults = hook
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, (rows, nulls) in enumerate([(30, 2), (20, 1), (25, 0)]):
        drop_file(inputs / f"d{i}.parquet", rows, seed=40 + i, nulls=nulls)
    out = tmp_path / "out"
    # A 0.2 s lease: the crashed runs' leases (same live process) go stale before the rerun.
    cfg = job(model_dir, inputs, out, lease_timeout_s=0.2, output_format=fmt)
    # Each run crashes at the next step; the next run recovers from it and crashes further on.
    for step in ("temp_written", "quarantine_moved", "part_visible", "record_written",
                 "manifest_written", "before_success"):
        faults.reset()
        hook.HOOK = crash_at(step)
        with pytest.raises(faults.Crash):
            scoring.run(cfg)
        time.sleep(0.3)
        assert not scoring.is_complete(str(out)), step
        with pytest.raises(Exception, match="_SUCCESS"):
            mlc_dist.read_scores(str(out))
    hook.HOOK = None
    # A stray part no record lists (a file someone dropped there): never served, removed.
    add_stray(out, fmt)
    summary = scoring.run(cfg)
    assert (summary["rows_in"], summary["rows_out"], summary["rows_quarantined"]) == (75, 72, 3)
    assert summary["strays_removed"] == 1
    recovered = mlc_dist.read_scores(str(out))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert parts_on_disk(out, fmt) == sorted(p["part"] for p in manifest["parts"]) == \
        ["part-d0", "part-d1", "part-d2"]
    assert os.listdir(out / "_tmp") == []  # the crashed runs' temp files are gone
    assert not (out / "_lease.json").exists()
    # Crash during --overwrite (after the manifest and records are gone), then --overwrite again.
    faults.reset()
    hook.HOOK = crash_at("overwrite")
    with pytest.raises(faults.Crash):
        scoring.run(cfg, overwrite=True)
    assert not scoring.is_complete(str(out)) and not (out / "_manifest.json").exists()
    assert list((out / "_manifest").glob("*.json")) == []  # records go before their parts
    time.sleep(0.3)
    hook.HOOK = None
    clean = scoring.run(cfg, overwrite=True)
    assert (clean["parts_committed"], clean["parts_skipped"]) == (3, 0)
    fresh = mlc_dist.read_scores(str(out))
    assert recovered.num_rows == fresh.num_rows == 72
    assert id_scores(recovered) == id_scores(fresh)
    if fmt == "delta":  # a plain Delta reader of the version the manifest publishes: the same
        published = json.loads((out / "_manifest.json").read_text())["delta_version"]
        assert id_scores(DeltaTable(str(out), version=published).to_pyarrow_table()) == \
            id_scores(fresh)
    quarantined = pq.read_table(out / "_quarantine")
    assert sorted(quarantined.column("reason").to_pylist()) == ["null_text"] * 3


def test_changed_inputs_are_rescored_withdrawn_dropped_new_scored(model_dir, tmp_path,
                                                                  ray_cluster, fmt):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, name in enumerate(["keep", "replace", "grow", "withdraw"]):
        drop_file(inputs / f"{name}.parquet", 12, seed=60 + i)
    out = tmp_path / "out"
    scoring.run(job(model_dir, inputs, out, output_format=fmt))
    keep_before = (out / "_manifest" / "part-keep.json").read_text()
    drop_file(inputs / "replace.parquet", 12, seed=70)  # same size in rows, other rows
    drop_file(inputs / "grow.parquet", 20, seed=62)  # the same first rows, and more
    os.remove(inputs / "withdraw.parquet")
    drop_file(inputs / "added.parquet", 9, seed=71)
    summary = scoring.run(job(model_dir, inputs, out, output_format=fmt))
    assert (summary["parts_committed"], summary["parts_skipped"], summary["parts_removed"],
            summary["parts_rescored"]) == (3, 1, 1, 2)
    assert (out / "_manifest" / "part-keep.json").read_text() == keep_before  # not recommitted
    assert parts_on_disk(out, fmt) == ["part-added", "part-grow", "part-keep", "part-replace"]
    table = mlc_dist.read_scores(str(out))
    clean_out = tmp_path / "clean"
    scoring.run(job(model_dir, inputs, clean_out, output_format=fmt))
    assert id_scores(table) == id_scores(mlc_dist.read_scores(str(clean_out)))
    assert sorted(table.column("id").to_pylist()) == \
        sorted(pq.read_table(inputs).column("id").to_pylist())

    # The same export but another tokenizer file, then only another precision: refused.
    other = tmp_path / "other-tokenizer"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["do_lower_case"] = not config.get("do_lower_case", True)
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(JobConfigError, match="model id"):
        scoring.run(job(other, inputs, out, output_format=fmt))
    with pytest.raises(JobConfigError, match="model id"):
        scoring.run(job(model_dir, inputs, out, precision="bf16", output_format=fmt))
    # Only another backend (unset is the ONNX graph on CPU): the graph is part of the model's
    # identity.
    if fmt == "parquet":  # (the same check for both formats: once is enough)
        with pytest.raises(JobConfigError, match="model id"):
            scoring.run(job(model_dir, inputs, out, backend="torch"))
    # The other format on the same output: refused, never mixed.
    other_fmt = {"parquet": "delta", "delta": "parquet"}[fmt]
    with pytest.raises(JobConfigError, match=f"score.output_format {other_fmt}"):
        scoring.run(job(model_dir, inputs, out, output_format=other_fmt))
    assert id_scores(mlc_dist.read_scores(str(out))) == id_scores(table)  # untouched
    if fmt == "delta":
        # Rows written into the table behind the protocol's back: readers of the published
        # version do not see them; the next run refuses the changed part (exit 3).
        keep = pq.read_table(next((out / "part=part-keep").glob("*.parquet")))
        write_deltalake(str(out), keep.append_column("part", pa.array(["part-keep"] *
                                                                      keep.num_rows)),
                        mode="append", partition_by=["part"])
        assert id_scores(mlc_dist.read_scores(str(out))) == id_scores(table)
        with pytest.raises(AuditError, match="part part-keep of the Delta table differs"):
            scoring.run(job(model_dir, inputs, out, output_format=fmt))


def test_an_input_changing_during_the_run_fails_it_with_exit_2(model_dir, tmp_path,
                                                               ray_cluster, hook):
    inputs = tmp_path / "in"
    inputs.mkdir()
    drop_file(inputs / "a.parquet", 10, seed=80)
    drop_file(inputs / "b.parquet", 10, seed=81)

    def rewrite_b(step, count):  # b was counted; it changes while a commits
        if step == "temp_written" and count == 1:
            drop_file(inputs / "b.parquet", 14, seed=82)

    hook.HOOK = rewrite_b
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(yaml.safe_dump(job(model_dir, inputs, tmp_path / "out").model_dump(
        mode="json", exclude_defaults=True)))
    done = CliRunner().invoke(app, ["score", str(cfg_file)])
    assert done.exit_code == 2, done.output
    assert "b.parquet: the input changed while it was scored" in done.output
    assert not scoring.is_complete(str(tmp_path / "out"))
    assert not (tmp_path / "out" / "_manifest" / "part-b.json").exists()
    assert not (tmp_path / "out" / "_lease.json").exists()  # a failed run lets go


def _cli(job_file, *args, **env):
    import ray

    full_env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS":
                ray.get_runtime_context().gcs_address, **env}
    return subprocess.Popen([sys.executable, "-m", "mlc_dist.cli", "score", str(job_file), *args],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_writers_one_wins_the_other_exits_2_and_overwrite_waits(model_dir, tmp_path,
                                                                    ray_cluster, fmt):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        drop_file(inputs / f"d{i}.parquet", 40, seed=90 + i)
    out = tmp_path / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job(model_dir, inputs, out, output_format=fmt)
                                       .model_dump(mode="json", exclude_defaults=True)))
    first = _cli(job_file)
    try:
        deadline = time.monotonic() + 240
        while not (out / "_lease.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        holder = json.loads((out / "_lease.json").read_text())
        assert holder["pid"] == first.pid
        for args in ([], ["--overwrite"]):  # a second writer, and one that would delete
            second = CliRunner().invoke(app, ["score", str(job_file), *args])
            assert second.exit_code == 2, second.output
            assert f"run {holder['run_id']}" in second.output and f"pid {first.pid}" in \
                second.output
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["parts_committed"] == 3
    table = mlc_dist.read_scores(str(out))
    assert sorted(table.column("id").to_pylist()) == \
        sorted(pq.read_table(inputs).column("id").to_pylist())


def test_the_quarantine_gate_exits_3_through_the_cli_without_success(model_dir, tmp_path,
                                                                      ray_cluster, fmt):
    inputs = tmp_path / "in"
    inputs.mkdir()
    drop_file(inputs / "a.parquet", 10, seed=95, nulls=2)  # 2 of 10 quarantined
    out = tmp_path / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job(model_dir, inputs, out, output_format=fmt)
                                       .model_dump(mode="json", exclude_defaults=True)))
    gated = CliRunner().invoke(app, ["score", str(job_file), "--set",
                                     "score.max_quarantine_fraction=0.1"])
    assert gated.exit_code == 3, gated.output
    assert "2 of 10 rows quarantined (20.0%), over score.max_quarantine_fraction 0.1" in \
        gated.output
    assert not (out / "_SUCCESS").exists() and not scoring.is_complete(str(out))
    # Raised to 0.2, the same committed parts pass, without scoring again.
    passed = CliRunner().invoke(app, ["score", str(job_file), "--set",
                                      "score.max_quarantine_fraction=0.2"])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["parts_skipped"] == 1
    assert mlc_dist.read_scores(str(out)).num_rows == 8
