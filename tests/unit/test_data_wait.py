"""The fraction of step time a rank waits on its data: StepClock's accounting, fed fake times,
and how metrics.json reports it over the ranks."""

from __future__ import annotations

import pytest

from mlc_dist.train.fit import data_wait_figures
from mlc_dist.train.state import StepClock, TrainState


class Timer:
    """A clock that only moves when the test moves it."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def loader(timer: Timer, waits: list[float]):
    """Batches that each take their wait to arrive (the time next() blocks)."""
    for i, wait in enumerate(waits):
        timer.t += wait
        yield i


def run(clock: StepClock, timer: Timer, waits: list[float], computes: list[float],
        accumulate: int = 1):
    """The train loop's shape: wait for a batch, compute, an optimizer step every `accumulate`."""
    clock.epoch_start()
    for i in clock.timed(loader(timer, waits)):
        timer.t += computes[i]
        if (i + 1) % accumulate == 0:
            clock.step()


def test_steady_steps_give_the_exact_fraction_of_time_spent_waiting():
    timer, state = Timer(), TrainState()
    clock = StepClock(state, warmup=2, timer=timer)
    # Steps 1-2 are warm-up (step 1 only marks where timing starts); steps 3-5 are steady:
    # (1 + 2 + 0.5) s waiting in (1+3 + 2+2 + 0.5+1.5) s.
    run(clock, timer, waits=[5.0, 4.0, 1.0, 2.0, 0.5], computes=[1.0, 1.0, 3.0, 2.0, 1.5])
    assert state.steady_time_s == pytest.approx(10.0)
    assert state.steady_data_wait_s == pytest.approx(3.5)
    assert clock.data_wait_fraction() == pytest.approx(0.35)


def test_every_micro_batch_wait_of_an_accumulation_window_counts():
    timer, state = Timer(), TrainState()
    clock = StepClock(state, warmup=0, timer=timer)
    # Two micro-batches per step; the first step marks the start.
    run(clock, timer, waits=[1.0, 1.0, 0.5, 0.25, 0.5, 0.25],
        computes=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], accumulate=2)
    assert state.steady_time_s == pytest.approx(2.75 + 2.75)
    assert clock.data_wait_fraction() == pytest.approx(1.5 / 5.5)


def test_waits_outside_steady_intervals_never_count():
    timer, state = Timer(), TrainState()
    clock = StepClock(state, warmup=0, timer=timer)
    run(clock, timer, waits=[1.0, 1.0], computes=[1.0, 1.0])
    # A next epoch: waiting for its first batch (and the end of the last) is not a step's time.
    run(clock, timer, waits=[7.0, 0.0], computes=[1.0, 3.0])
    assert state.steady_time_s == pytest.approx(2.0 + 3.0)
    assert state.steady_data_wait_s == pytest.approx(1.0)
    assert clock.data_wait_fraction() == pytest.approx(0.2)


def test_no_steady_step_no_fraction():
    timer, state = Timer(), TrainState()
    clock = StepClock(state, warmup=5, timer=timer)
    run(clock, timer, waits=[1.0, 1.0], computes=[1.0, 1.0])
    assert clock.data_wait_fraction() is None


def test_metrics_report_rank_0_and_the_slowest_fed_rank():
    state = TrainState(data_wait_fractions=[0.1, 0.4, None, 0.25])
    assert data_wait_figures(state) == {"data_wait_fraction": 0.1, "data_wait_fraction_max": 0.4}
    assert data_wait_figures(TrainState()) == {"data_wait_fraction": None,
                                               "data_wait_fraction_max": None}


def test_startup_figures_split_the_time_to_the_first_step_in_order():
    from mlc_dist.train.fit import startup_figures

    state = TrainState(worker_start_time=112.5, ready_time=118.0, first_batch_time=121.25,
                       first_step_time=122.0)
    timing = {"fit_at": 100.0, "started_at": 104.0}
    assert startup_figures(timing, state) == {"driver_s": 4.0, "workers_s": 8.5, "model_s": 5.5,
                                              "first_batch_s": 3.25, "first_step_s": 0.75}
    state.first_step_time = None  # a run that never stepped: that gap is unknown, not zero
    assert startup_figures(timing, state)["first_step_s"] is None


def test_the_clock_marks_the_first_batch_of_the_attempt():
    import time

    timer, state = Timer(), TrainState(first_batch_time=1.0)  # a checkpoint's old attempt
    clock = StepClock(state, warmup=0, timer=timer)
    assert state.first_batch_time is None
    before = time.time()
    run(clock, timer, waits=[0.5, 0.5], computes=[1.0, 1.0])
    assert before <= state.first_batch_time <= state.first_step_time <= time.time()
