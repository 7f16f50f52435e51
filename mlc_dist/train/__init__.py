"""Ray Train fine-tuning: `fit(job)` on the driver (fit.py), `train_loop_per_worker` on each
worker (worker.py), and the `TrainState` a checkpoint restores (state.py)."""

from mlc_dist.train.fit import count_training_steps, fit
from mlc_dist.train.state import TrainState
from mlc_dist.train.worker import train_loop_per_worker

__all__ = ["TrainState", "count_training_steps", "fit", "train_loop_per_worker"]
