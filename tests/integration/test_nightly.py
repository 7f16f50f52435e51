"""Rerunnable bulk scoring on a real local Ray cluster: kill mid-way, rerun, audit, bad rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from mlc_dist import scoring
from mlc_dist.artifacts import load_export
from mlc_dist.cli import _user_error
from mlc_dist.config import validate_job
from mlc_dist.data import DataError
from mlc_dist.demo import generate
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import onnx_backend
from mlc_dist.scoring.onnx_backend import onnx_digest
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model_dir(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                             "comment_text")


def write_inputs(folder, sizes):
    os.makedirs(folder, exist_ok=True)
    for i, n in enumerate(sizes):
        pq.write_table(generate(n, seed=10 + i).select(["id", "comment_text"]),
                       os.path.join(folder, f"drop-{i}.parquet"))
    return folder


def job_tree(model_dir, inputs, output, **score):
    return {"run": {"name": "nightly-test"}, "data": {"id_columns": ["id"]},
            "score": {"input": inputs, "output": output, "model": model_dir, "window_rows": 40,
                      **score}}


def test_killed_run_resumes_without_loss_duplicates_or_rewrites(model_dir, tmp_path, join_env):
    inputs = write_inputs(tmp_path / "in" / "date=2024-05-01", [90, 70])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_tree(
        model_dir, str(tmp_path / "in" / "date={date}" / "*.parquet"),
        str(tmp_path / "out" / "date={date}"))))
    out = tmp_path / "out" / "date=2024-05-01"
    cmd = [sys.executable, "-m", "mlc_dist.cli", "score", str(job_file), "--date", "2024-05-01"]
    env = {**join_env, "PYTHONPATH": REPO, scoring.FAULT_ENV: "1"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 99, killed.stderr[-2000:]
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-drop-0.parquet"] and not (out / "_SUCCESS").exists()
    assert not scoring.is_complete(str(out))
    with pytest.raises(DataError, match="_SUCCESS"):
        scoring.read_scores(str(out))
    first = out / "part-drop-0.parquet"
    before = (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes())

    del env[scoring.FAULT_ENV]
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert (summary["parts_committed"], summary["parts_skipped"]) == (1, 1)
    assert (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes()) == before
    table = scoring.read_scores(str(out))
    source = pq.read_table(inputs)
    assert table.num_rows == source.num_rows == 160
    assert sorted(table.column("id").to_pylist()) == sorted(source.column("id").to_pylist())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (160, 160, 0)
    # score.backend unset on a CPU job: the export's ONNX graph scored, and is in the model id.
    graph = onnx_digest(model_dir, "onnx")
    assert manifest["backend"] == {"backend": "onnx", "graph_sha256": graph}
    assert manifest["model_id"] == scoring.model_id(model_dir, {**scoring.scoring_settings(
        validate_job(yaml.safe_load(job_file.read_text())).score), "backend": "onnx",
        "graph_sha256": graph})
    # No --date for a {date} path, and a bad date: user errors, exit code 2.
    no_date = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True, timeout=300)
    assert no_date.returncode == 2 and "--date" in no_date.stderr


def test_scores_match_single_process_reference(model_dir, tmp_path, ray_cluster):
    inputs = write_inputs(tmp_path / "in", [130])
    job = validate_job(job_tree(model_dir, str(inputs), str(tmp_path / "out"), batch_size=7))
    summary = scoring.run(job)
    # The time to the first scored rows is part of the run's, and a rerun that scores nothing
    # has none.
    assert 0 < summary["seconds_to_first_row"] <= summary["seconds"]
    assert scoring.run(job)["seconds_to_first_row"] is None
    table = scoring.read_scores(str(tmp_path / "out"))
    source = pq.read_table(inputs)
    by_id = dict(zip(source.column("id").to_pylist(), source.column("comment_text").to_pylist()))
    model, tokenizer, _ = load_export(model_dir)
    texts = [by_id[i] for i in table.column("id").to_pylist()]
    with torch.inference_mode():
        ref = np.concatenate([torch.sigmoid(model(**tokenizer([t], truncation=True, max_length=64,
                              return_tensors="pt")).logits).numpy() for t in texts])
    got = np.stack([table.column(f"score_{n}").to_numpy() for n in LABELS.names], axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_bad_rows_follow_the_policy_with_counts(model_dir, tmp_path, ray_cluster):
    folder = tmp_path / "in"
    folder.mkdir()
    texts = [b"fine text", b"\xff\xfe broken", None, b"word " * 40, b"ok again", b"dup"]
    pq.write_table(pa.table({"id": ["a", "b", "c", "d", "e", "a"],
                             "comment_text": pa.array(texts, pa.binary())}), folder / "x.parquet")
    pq.write_table(pa.table({"id": ["n1", "n2"], "comment_text": pa.array([3, 4])}),
                   folder / "y.parquet")
    out = tmp_path / "out"
    job = validate_job(job_tree(model_dir, str(folder), str(out), max_chars=50,
                                on_long_text="quarantine", max_quarantine_fraction=1.0))
    summary = scoring.run(job)
    assert (summary["rows_in"], summary["rows_out"], summary["rows_quarantined"]) == (8, 3, 5)
    assert summary["duplicate_ids"] == 1
    q = pq.read_table(out / "_quarantine")
    assert sorted(zip(q.column("id").to_pylist(), q.column("reason").to_pylist())) == [
        ("b", "invalid_utf8"), ("c", "null_text"), ("d", "too_long"), ("n1", "non_string_text"),
        ("n2", "non_string_text")]
    with pytest.raises(Exception, match=r"x.parquet.*on_bad_text"):
        scoring.run(validate_job(job_tree(model_dir, str(folder), str(tmp_path / "o2"),
                                          on_bad_text="fail")))
    assert not scoring.is_complete(str(tmp_path / "o2"))


def _scorer_actors() -> int:
    import ray
    from ray.util.state import list_actors

    # This test's cluster by address: another Ray may run on the machine (the cluster tier's).
    address = ray.get_runtime_context().gcs_address
    return sum(a.class_name.startswith("MapWorker") and "Scorer" in a.class_name
               for a in list_actors(address=address, limit=10_000))


def test_a_drop_of_files_shares_one_actor_pool(model_dir, tmp_path, ray_cluster):
    # 40-row windows span files; an empty file still gets its (empty) part.
    inputs = write_inputs(tmp_path / "in", [25, 0, 30, 7])
    job = validate_job(job_tree(model_dir, str(inputs), str(tmp_path / "out")))
    before = _scorer_actors()
    summary = scoring.run(job)
    assert _scorer_actors() - before == 1  # one pool for the four files, not one per file
    assert (summary["parts_committed"], summary["rows_in"], summary["rows_out"]) == (4, 62, 62)
    for i, n in enumerate([25, 0, 30, 7]):
        part = pq.read_table(tmp_path / "out" / f"part-drop-{i}.parquet")
        source = pq.read_table(inputs / f"drop-{i}.parquet")
        assert part.num_rows == n and part.column("id").to_pylist() == \
            source.column("id").to_pylist()
        record = json.loads((tmp_path / "out" / "_manifest" / f"part-drop-{i}.json").read_text())
        assert (record["rows_in"], record["rows_out"]) == (n, n)



def test_bench_score_prints_the_comparison(model_dir, tmp_path, join_env):
    # A separate process, joining this run's cluster (the bench starts its own otherwise).
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("".join(f"{t}\tx\tid\n" for t in
                           generate(40, seed=3).column("comment_text").to_pylist()))
    cmd = [sys.executable, "-m", "mlc_dist.cli", "bench", "score", "--rows", "120", "--files",
           "3", "--model-dir", model_dir, "--data-file", str(tsv), "--backend", "onnx",
           "--repeats", "2"]
    done = subprocess.run(cmd, env={**join_env, "PYTHONPATH": REPO}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["rows"], figures["files"], figures["rows_quarantined"]) == (120, 3, 0)
    for key in ("ours_rows_per_s", "pipeline_rows_per_s", "bare_rows_per_s",
                "ratio_vs_pipeline", "fraction_of_bare"):
        assert figures[key] > 0, key
    assert figures["max_abs_diff"] <= 1e-4  # the three paths score the same rows the same
    # Ours ran on the ONNX fp32 graph; the int8 and torch int8 loops ran on the same rows.
    assert figures["backend"] == "onnx" and figures["max_abs_diff_vs_fp32"] <= 1e-5
    for key in ("int8_rows_per_s", "ratio_vs_bare_fp32", "int8_max_abs_diff_vs_fp32",
                "decision_flip_rate", "int8_decision_flip_rate", "max_auc_drop"):
        assert key in figures, key
    assert figures["int8_max_abs_diff_vs_fp32"] > 0 and figures["auc_against"] == "fp32 decisions"
    # Two rounds, every side in each: the figures are the medians of the rounds' own.
    rounds = figures["per_round"]
    # (a figure the two rounds gave alike, to its rounding, is kept as it is, not listed)
    assert figures["rounds"] == 2 and rounds and all(len(v) == 2 for v in rounds.values())
    # Peak memory only from the first round: the second would count the loops compared in round
    # one, whose heap stays with this process.
    assert "peak_rss_mb" not in rounds and "peak_rss_mb" not in figures["spread"]
    for key in ("ours_rows_per_s", "bare_rows_per_s", "onnx_rows_per_s", "fraction_of_bare"):
        if key not in rounds:  # the two rounds gave the same figure: kept as it is
            continue
        assert figures[key] == pytest.approx(sum(rounds[key]) / 2, abs=1e-3), key
        assert figures["spread"][key] == [min(rounds[key]), max(rounds[key])], key


def test_an_actor_whose_node_made_another_graph_refuses_to_score(model_dir, tmp_path,
                                                                 ray_cluster, monkeypatch):
    """The driver identifies the ONNX graph (model id); each actor loads its own node's graph.
    Here the driver's cache holds another graph for the export (as a node with another torch or
    onnxruntime would make): the actors refuse it, and nothing is committed."""
    inputs = write_inputs(tmp_path / "in", [20])
    out = tmp_path / "out"
    monkeypatch.setenv("MLC_DIST_CACHE", str(tmp_path / "driver-cache"))  # actors: their own
    int8 = onnx_backend.graph_path(model_dir, "onnx-int8")
    shutil.copyfile(int8, onnx_backend.graph_path(model_dir, "onnx"))  # the "other" graph
    job = validate_job(job_tree(model_dir, str(inputs), str(out)))
    with pytest.raises(Exception, match="is not the one this job identified") as refused:
        scoring.run(job)
    # Its type survives Ray (not an ActorDiedError holding its text): the CLI exits 2 with it.
    assert isinstance(_user_error(refused.value), onnx_backend.OnnxBackendError)
    assert not list(out.glob("part-*")) and not (out / "_SUCCESS").exists()
