"""Model selection without Ray: which evaluations count toward early stopping (Worker.track_best),
which checkpoint fit exports (select_checkpoint), and that the counters survive a checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mlc_dist.config import validate_job
from mlc_dist.train.fit import select_checkpoint
from mlc_dist.train.state import TrainState
from mlc_dist.train.worker import Worker


def _worker(**train) -> Worker:
    w = object.__new__(Worker)  # only what track_best reads: the job, the state, the rank
    w.job = validate_job({"run": {"name": "t"}, "train": train})
    w.state, w.rank, w.total_steps = TrainState(), 0, 10**6
    return w


def _evaluate(w: Worker, step: int, value: float, metric: str = "val_mean_auc") -> None:
    w.state.global_step = step
    w.track_best({metric: value, "val_micro_f1": 0.0})


def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta():
    w = _worker(checkpoint_metric="val_mean_auc", early_stopping_patience=3,
                early_stopping_min_delta=0.01)
    _evaluate(w, 2, 0.70)
    _evaluate(w, 4, 0.75)  # improves: the new best
    assert w.state.best == {"metric": "val_mean_auc", "mode": "max", "value": 0.75, "step": 4}
    _evaluate(w, 6, 0.755)  # better, but not by more than min_delta
    _evaluate(w, 6, 0.755)  # the same weights evaluated again (an epoch end) do not count
    _evaluate(w, 8, math.nan)  # a NaN never improves
    assert (w.state.evals_since_best, w.state.stopped_early_at) == (2, None)
    _evaluate(w, 10, 0.74)
    assert (w.state.evals_since_best, w.state.stopped_early_at) == (3, 10)
    assert w.state.best["step"] == 4


def test_patience_spent_at_the_last_step_is_no_early_stop():
    # ValueEval's recipe: the last two epoch ends without a new best, the second one the run's
    # end; metrics.json must not say it stopped early.
    w = _worker(checkpoint_metric="val_mean_auc", early_stopping_patience=2)
    w.total_steps = 30
    for step, value in ((10, 0.8), (20, 0.7), (30, 0.7)):
        _evaluate(w, step, value)
    assert w.patience_spent() and w.state.stopped_early_at is None


def test_min_mode_and_the_step_metric():
    w = _worker(checkpoint_metric="step", checkpoint_mode="min", early_stopping_patience=2)
    for step in (3, 6):
        w.state.global_step = step
        w.track_best({"val_mean_auc": 0.5})  # step is not a val_ figure: taken from the state
    assert w.state.best["step"] == 3 and w.state.evals_since_best == 1
    assert w.state.stopped_early_at is None and not w.patience_spent()


def test_a_rerun_selecting_by_another_metric_starts_over():
    w = _worker(checkpoint_metric="val_mean_auc", early_stopping_patience=5)
    _evaluate(w, 2, 0.8)
    _evaluate(w, 4, 0.7)
    w.job = validate_job({"run": {"name": "t"}, "train": {
        "checkpoint_metric": "val_micro_f1", "early_stopping_patience": 5}})
    _evaluate(w, 6, 0.1, metric="val_micro_f1")
    assert w.state.best["metric"] == "val_micro_f1" and w.state.evals_since_best == 0


def test_selection_counters_survive_a_checkpoint(tmp_path):
    state = TrainState(best={"metric": "val_mean_auc", "mode": "max", "value": 0.8, "step": 4},
                       evals_since_best=2, last_eval_step=8, stopped_early_at=None)
    torch.save(state.state_dict(), tmp_path / "s.pt")
    loaded = TrainState()
    loaded.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert loaded == state


def _result(reports):
    checkpoints = [(SimpleNamespace(path=f"c{i}"), m) for i, m in enumerate(reports)]
    return SimpleNamespace(best_checkpoints=checkpoints, checkpoint=checkpoints[-1][0],
                           metrics=checkpoints[-1][1])


@pytest.mark.parametrize("mode, chosen", [("max", "c1"), ("min", "c2")])
def test_select_checkpoint_takes_the_best_evaluated_one(mode, chosen):
    result = _result([
        {"val_mean_auc": math.nan, "step": 5},  # a checkpoint-only report (NaN)
        {"val_mean_auc": 0.9, "val_micro_f1": 0.1, "step": 10},
        {"val_mean_auc": 0.6, "step": 15},
        {"val_mean_auc": 0.9, "step": 20},  # equal to step 10's: the earlier wins
        {"step": 25},  # checkpoint-only with step as the only figure
    ])
    tcfg = validate_job({"run": {"name": "t"}, "train": {"checkpoint_metric": "val_mean_auc",
                                                         "checkpoint_mode": mode}}).train
    checkpoint, metrics, selection = select_checkpoint(result, tcfg)
    assert checkpoint.path == chosen
    assert selection == {"metric": "val_mean_auc", "mode": mode,
                         "value": metrics["val_mean_auc"], "step": metrics["step"]}


def test_select_checkpoint_by_step_skips_checkpoint_only_reports_and_unset_takes_the_latest():
    result = _result([{"step": 2}, {"val_mean_auc": 0.5, "step": 4}, {"val_mean_auc": 0.6,
                                                                      "step": 6}])
    job = validate_job({"run": {"name": "t"}, "train": {"checkpoint_metric": "step",
                                                        "checkpoint_mode": "min"}})
    assert select_checkpoint(result, job.train)[0].path == "c1"
    latest = validate_job({"run": {"name": "t"}}).train
    assert select_checkpoint(result, latest) == (result.checkpoint, result.metrics, None)
