"""Every shipped smoke job is its real job made small: same model, data layout and training
recipe, only size and path keys differ, so the smoke run exercises what the real run does."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlc_dist.config import load_job

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SMOKES = sorted(JOBS.glob("*_smoke.yaml"))
# The keys a smoke job may change. Everything else (model, head, pooling, dropout, lr, schedule,
# precision, strategy, label layout, scoring policy) must be the real job's.
SIZE_AND_PATH_KEYS = {
    # names and where things are read from and written to
    "run.name", "run.output_dir", "data.train", "data.validation", "data.train_labels",
    "data.validation_labels", "score.input", "score.output", "score.model", "evaluate.input",
    "evaluate.labels", "evaluate.output",
    # how the file at a path is parsed: the nightly smoke scores the GoEmotions dev TSV as its drop
    "data.format", "data.header", "data.column_names", "data.quoting",
    # how long, how big, and the log cadence that scales with the length
    "train.epochs", "train.max_steps", "train.batch_size_per_worker", "train.log_every_steps",
    "train.eval_every_steps", "train.checkpoint_every_steps",
    "data.max_length", "model.hidden_size", "model.num_layers", "model.num_heads",
    "model.intermediate_size", "model.vocab_size", "scaling.num_workers",
}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_real_job_has_a_smoke_sibling():
    real = {p.name for p in JOBS.glob("*.yaml") if not p.stem.endswith("_smoke")}
    assert {p.name.replace("_smoke", "") for p in SMOKES} == real


@pytest.mark.parametrize("smoke", SMOKES, ids=[p.stem for p in SMOKES])
def test_smoke_job_differs_from_its_real_job_only_in_size_and_path_keys(smoke):
    real = _flat(load_job(smoke.with_name(smoke.name.replace("_smoke", ""))).model_dump())
    small = _flat(load_job(smoke).model_dump())
    drift = {k: (real.get(k), small.get(k)) for k in real.keys() | small.keys()
             if real.get(k) != small.get(k) and k not in SIZE_AND_PATH_KEYS}
    assert not drift, f"{smoke.name}: (real, smoke) {drift}"
