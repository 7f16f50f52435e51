"""TrainState: where one run's loop is and what it has seen, saved in every checkpoint.

Plain numbers and lists only (checkpoints load with `torch.load(weights_only=True)`); the weights
and optimizer state are the engine's (strategy.py).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class TrainState:
    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batches_done: int = 0  # micro-batches of the current epoch already trained (resume skips them)
    train_time_s: float = 0.0
    train_samples: int = 0  # global: every worker's rows
    train_tokens: int = 0  # global: real (unpadded) tokens
    history: list[dict] = field(default_factory=list)  # loss/lr at log steps, val_* at evaluations
    resumed_from: list[int] = field(default_factory=list)  # steps this run restarted from
    worker_nodes: list[str] = field(default_factory=list)  # Ray node id per rank (latest attempt)
    engine: dict = field(default_factory=dict)  # what wrapped the model (latest attempt)
    # Model selection (train.checkpoint_metric): its best evaluation so far ({metric, mode, value,
    # step}), the evaluations since that did not improve on it, and where early stopping ended
    # the run; saved so that a resumed run keeps counting.
    best: dict | None = None
    evals_since_best: int = 0
    last_eval_step: int | None = None  # an evaluation of the same weights again does not count
    stopped_early_at: int | None = None
    # Wall-clock times (time.time()) of rank 0's way to its first step, in this attempt: the
    # training function entered, the model and engine ready (and resumed), the first batch in,
    # the first step done (fit.startup_figures).
    worker_start_time: float | None = None
    ready_time: float | None = None
    first_batch_time: float | None = None
    first_step_time: float | None = None
    # Throughput since this attempt's loop started (StepClock); a resumed run measures anew.
    loop_start_time: float | None = None
    steady_time_s: float = 0.0
    steady_samples: int = 0
    steady_tokens: int = 0
    # Of steady_time_s, the time this rank spent blocked on its data iterator (StepClock.timed);
    # each rank's fraction of steady step time waiting, gathered at checkpoints (rank order).
    steady_data_wait_s: float = 0.0
    data_wait_fractions: list[float | None] = field(default_factory=list)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])


def rng_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rng_rank{rank}.pt")


def save_rng(directory: str, rank: int) -> None:
    """This rank's random number generator states (Python, numpy, torch CPU, every CUDA device),
    next to its checkpoint, in types `torch.load(weights_only=True)` accepts."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    states = {"python": [version, list(words), gauss],
              "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                        "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                        "gauss": np_state["gauss"]},
              "torch_rng": torch.get_rng_state(),
              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(states, rng_file(directory, rank))


def read_rng(directory: str, rank: int) -> dict | None:
    path = rng_file(directory, rank)
    return torch.load(path, weights_only=True) if os.path.exists(path) else None


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch_rng"])
    if "python" in states:  # checkpoints before these were saved hold torch's CPU state only
        version, words, gauss = states["python"]
        random.setstate((version, tuple(words), gauss))
        n = states["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"],
                             "gauss": n["gauss"], "state": {"key": n["key"].numpy().astype(
                                 np.uint32), "pos": n["pos"]}})
    if states.get("cuda"):
        torch.cuda.set_rng_state_all(states["cuda"])


class StepClock:
    """Time to the first optimizer step, and throughput after the first `warmup` steps.

    Steady figures sum only the gaps between consecutive steps of one epoch, so evaluation,
    checkpoints and epoch ends never count as training time; of each gap, the time spent waiting
    for the data iterator's next batch (`timed`) is the data wait. `timer`: a monotonic clock
    for those gaps (the first step's wall time is time.time(), comparable with the driver's).
    """

    def __init__(self, state: TrainState, warmup: int, timer=time.perf_counter):
        self.state, self.warmup, self.steps, self.mark, self.timer = state, warmup, 0, None, timer
        self._waited = 0.0  # blocked on the data since the last step
        state.loop_start_time, state.first_step_time = time.time(), None
        state.first_batch_time = None
        state.steady_time_s, state.steady_samples, state.steady_tokens = 0.0, 0, 0
        state.steady_data_wait_s = 0.0

    def epoch_start(self) -> None:
        self.mark, self._waited = None, 0.0

    def timed(self, batches):
        """`batches`, each next() timed: one perf_counter pair per batch, no device sync."""
        it = iter(batches)
        while True:
            started = self.timer()
            try:
                batch = next(it)
            except StopIteration:
                return
            self._waited += self.timer() - started
            if self.state.first_batch_time is None:
                self.state.first_batch_time = time.time()
            yield batch

    def step(self, tokens=None) -> None:
        """`tokens`: the global token count so far, a device tensor while the train loop keeps
        it there (no host sync per step; `sync` turns the sums into ints at log steps)."""
        state, now = self.state, self.timer()
        tokens = state.train_tokens if tokens is None else tokens
        self.steps += 1
        if state.first_step_time is None:
            state.first_step_time = time.time()
        if self.mark is not None and self.steps > self.warmup:
            state.steady_time_s += now - self.mark[0]
            state.steady_samples += state.train_samples - self.mark[1]
            state.steady_tokens = state.steady_tokens + (tokens - self.mark[2])
            state.steady_data_wait_s += self._waited
        self.mark, self._waited = (now, state.train_samples, tokens), 0.0

    def data_wait_fraction(self) -> float | None:
        """This rank's steady step time spent waiting on its data, 0..1; None before any."""
        state = self.state
        return state.steady_data_wait_s / state.steady_time_s if state.steady_time_s else None

    def sync(self) -> None:
        """Device-side token sums -> ints in the state (before it is logged or saved)."""
        self.state.steady_tokens = int(self.state.steady_tokens)
