"""Reruns of a run name: resume when only the length or cadence changed, else start fresh."""

import json
import logging
import os

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
