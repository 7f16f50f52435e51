"""Reruns of a run name: resume when only the length or cadence changed, else start fresh."""

import json
import logging
import os

import pytest

from mlc_dist.config import validate_job
from mlc_dist.runs import JOB_FILE, claim_run_dir


def _job(tmp_path, **train):
    return validate_job({"run": {"name": "r", "output_dir": str(tmp_path)},
                         "data": {"train": "train.csv", "label_columns": ["a", "b"]},
                         "train": {"max_steps": 10, **train}})


def test_a_longer_rerun_keeps_the_run_and_records_the_job(tmp_path):
    first = _job(tmp_path)
    assert claim_run_dir(first) is None
    (tmp_path / "r" / "checkpoint").mkdir()
    assert claim_run_dir(_job(tmp_path, max_steps=30, checkpoint_every_steps=5)) is None
    assert (tmp_path / "r" / "checkpoint").is_dir()
    recorded = json.load(open(tmp_path / "r" / JOB_FILE))
    assert recorded["train"]["max_steps"] == 30


def test_another_strategy_moves_the_old_run_aside(tmp_path, caplog):
    logging.getLogger("mlc_dist").addHandler(caplog.handler)  # it may not propagate to the root
    claim_run_dir(_job(tmp_path))
    (tmp_path / "r" / "checkpoint").mkdir()
    moved = claim_run_dir(_job(tmp_path, strategy="deepspeed", zero_stage=2))
    assert moved and os.path.isdir(os.path.join(moved, "checkpoint"))
    assert not (tmp_path / "r" / "checkpoint").exists()
    assert json.load(open(tmp_path / "r" / JOB_FILE))["train"]["strategy"] == "deepspeed"
    logging.getLogger("mlc_dist").removeHandler(caplog.handler)
    said = caplog.text
    assert "train.strategy: 'ddp' -> 'deepspeed'" in said and "train.zero_stage" in said


def _job_on(tmp_path, data: str, model: str, **sections):
    tree = {"run": {"name": "r", "output_dir": str(tmp_path / "runs")},
            "data": {"train": data, "label_list_column": "labels",
                     "label_names_file": str(tmp_path / "labels.txt")},
            "model": {"name": model}, "train": {"max_steps": 10}}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return validate_job(tree)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-0.csv").write_text("text,labels\na,0\n")
    (tmp_path / "labels.txt").write_text("x\ny\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"hidden_size": 32}')
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    return tmp_path


def _rerun_moves(tmp_path, job, change) -> str | None:
    assert claim_run_dir(job) is None
    (tmp_path / "runs" / "r" / "checkpoint").mkdir()
    change()
    return claim_run_dir(job)


@pytest.mark.parametrize("change", [
    lambda t: (t / "data" / "part-0.csv").write_text("text,labels\nb,1\nc,0\n"),  # new rows
    lambda t: (t / "data" / "part-1.csv").write_text("text,labels\nd,1\n"),  # a new file
    lambda t: (t / "labels.txt").write_text("x\nz\n"),
    lambda t: (t / "model" / "model.safetensors").write_bytes(b"other weights"),
], ids=["data-rewritten", "data-file-added", "label-names", "base-model"])
def test_new_files_at_the_same_paths_start_fresh(files, change, caplog):
    logging.getLogger("mlc_dist").addHandler(caplog.handler)
    job = _job_on(files, str(files / "data" / "*.csv"), str(files / "model"))
    moved = _rerun_moves(files, job, lambda: change(files))
    logging.getLogger("mlc_dist").removeHandler(caplog.handler)
    assert moved and os.path.isdir(os.path.join(moved, "checkpoint")), caplog.text
    assert "files." in caplog.text


def test_object_store_data_is_fingerprinted_through_its_listing(files):
    from mlc_dist.runs import files_fingerprint

    uri = f"file://{files}/data"  # the object-store code path (pyarrow filesystems by URI)
    job = _job_on(files, uri + "/*.csv", str(files / "model"))
    moved = _rerun_moves(files, job, lambda: (files / "data" / "part-0.csv").write_text("new,1\n"))
    assert moved is not None
    assert files_fingerprint(uri) != files_fingerprint(str(files / "labels.txt"))


def test_unchanged_files_evaluation_and_thresholds_resume(files):
    job = _job_on(files, str(files / "data"), str(files / "model"))
    changed = _job_on(files, str(files / "data"), str(files / "model"),
                      train={"threshold_strategy": "global", "threshold_beta": 2.0},
                      evaluate={"input": str(files / "data"), "batch_size": 7})
    assert _rerun_moves(files, job, lambda: None) is None
    assert claim_run_dir(changed) is None
    assert (files / "runs" / "r" / "checkpoint").is_dir()


def test_a_length_change_resumes_and_says_the_schedule_is_recomputed(files, caplog):
    logging.getLogger("mlc_dist").addHandler(caplog.handler)
    job = _job_on(files, str(files / "data"), str(files / "model"))
    longer = _job_on(files, str(files / "data"), str(files / "model"), train={"max_steps": 30})
    assert _rerun_moves(files, job, lambda: None) is None
    assert claim_run_dir(longer) is None
    logging.getLogger("mlc_dist").removeHandler(caplog.handler)
    assert "train.max_steps: 10 -> 30" in caplog.text
    assert "learning-rate schedule" in caplog.text and "recomputed" in caplog.text
