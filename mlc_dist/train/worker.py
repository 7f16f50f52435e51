"""One Ray Train worker: train_loop_per_worker(config) and the Worker it drives.

Owns the step loop, evaluation gathering and checkpoints. Model building is in models/, parallel
wrapping strategy.py's, the driver side (data, trainer, export) fit.py's.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from mlc_dist import data, logs, metrics, storage, strategy
from mlc_dist.artifacts import ModelMeta, save_export
from mlc_dist.config import JobConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.losses import build_loss
from mlc_dist.models import build_model, output_bias
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.train import resume
from mlc_dist.train.state import (StepClock, TrainState, read_rng, restore_rng,
                                  save_rng)

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
VAL_FILE = "validation_predictions.npz"  # probs + labels of the last evaluation, for the report
PROGRESS_INTERVAL_S = 1.0  # rank 0 sends the driver's progress display at most this often


class Collate(NumpyBatchCollateFn):
    """Ragged token rows -> padded CPU tensors, padded to this batch's longest row rounded up
    to `multiple` (never past `max_width`, data.max_length) on the tokenizer's side
    (data.padding_of, data.pad_batch)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", multiple: int = 1,
                 max_width: int | None = None):
        self.pad_token_id, self.padding_side = pad_token_id, padding_side
        self.multiple, self.max_width = multiple, max_width

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.from_numpy(v) for k, v in data.pad_batch(
            batch, self.pad_token_id, self.padding_side, self.multiple, self.max_width).items()}
        # np.array copies: Ray hands out read-only views, which torch.from_numpy warns about.
        out["labels"] = torch.from_numpy(np.array(batch[data.LABELS], dtype=np.float32))
        return out


def _gather(array: np.ndarray) -> np.ndarray:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@torch.inference_mode()
def evaluate(engine, shard, collate: Collate, batch_size: int, rank: int, world: int,
             outputs: OutputSchema):
    """Probabilities and labels for the whole validation set, on every rank.

    Every rank reads the full (unsplit) validation set in the same order (fit.py asks Ray Data to
    preserve it) and runs the model on every world-th batch, so each row is evaluated exactly
    once, then the parts are gathered.
    """
    engine.model.eval()
    probs, labels, filler, num_batches = [], [], None, 0

    def forward(batch):
        inputs = {k: v.to(engine.device) for k, v in batch.items() if k != "labels"}
        with engine.autocast():
            return engine.module(**inputs).logits

    for i, batch in enumerate(shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate)):
        num_batches, filler = i + 1, filler or batch
        if i % world != rank:
            continue
        probs.append(outputs.probabilities(forward(batch).float()).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())  # on a GPU worker Ray moved it there
    # ZeRO-3 gathers parameters inside every forward (a collective): all ranks run as many.
    for _ in range(math.ceil(num_batches / world) - len(probs)):
        forward(filler)
    engine.model.train()
    cat = lambda xs, n: np.concatenate(xs) if xs else np.zeros((0, n), np.float32)  # noqa: E731
    return (_gather(cat(probs, outputs.num_outputs)), _gather(cat(labels, len(outputs.names))))


def tune_thresholds(tcfg, labels: np.ndarray, probs: np.ndarray) -> metrics.Thresholds:
    """The job's threshold settings (train.threshold*) applied to validation predictions."""
    return metrics.tune_thresholds(labels, probs, tcfg.threshold_strategy, tcfg.threshold_beta,
                                   tcfg.threshold, tcfg.threshold_min_support,
                                   tcfg.threshold_fallback, tcfg.threshold_shrinkage)


def check_coverage(labels: np.ndarray, expected: dict | None) -> None:
    """Each validation row evaluated exactly once across ranks: the gathered rows and per-label
    label sums equal the validation set's statistics (a row seen twice or missed changes them),
    so thresholds are never tuned on a skewed set."""
    if not expected:
        return
    sums = labels.sum(axis=0) if len(labels) else np.zeros(len(expected["positives"]))
    if len(labels) != expected["num_rows"] or not np.allclose(sums, expected["positives"]):
        raise RuntimeError(
            f"validation: {len(labels)} rows evaluated, per-label positives {sums.tolist()}; the "
            f"validation set has {expected['num_rows']} rows, positives {expected['positives']}: "
            "the ranks read it in different orders (a row evaluated twice or not at all)")


def train_batches(shard, tcfg, collate: Collate, epoch: int, pin_memory: bool = False):
    """This epoch's training batches: Ray's local shuffle, then optional length bucketing.
    Without bucketing, Ray collates, pins (GPU) and copies to the device on its prefetch
    thread, off the training thread."""
    shuffle = {"local_shuffle_buffer_size": tcfg.shuffle_buffer_rows or None,
               "local_shuffle_seed": tcfg.seed + epoch}
    if not tcfg.length_bucketing:
        return shard.iter_torch_batches(batch_size=tcfg.batch_size_per_worker, collate_fn=collate,
                                        prefetch_batches=2, pin_memory=pin_memory,
                                        **shuffle)
    windows = shard.iter_batches(batch_size=tcfg.batch_size_per_worker * data.BUCKET_WINDOW_BATCHES,
                                 batch_format="numpy", prefetch_batches=1, **shuffle)
    return map(collate, data.length_buckets(windows, tcfg.batch_size_per_worker, tcfg.seed + epoch))


def maybe_inject_fault(step: int, rank: int, run_dir: str) -> None:
    """Drills: MLC_DIST_FAULT_STEP=k kills rank MLC_DIST_FAULT_RANK (default 1) hard at step k.

    Once per run: a marker in the run directory stops the restarted workers failing again.
    """
    fault_step = os.environ.get("MLC_DIST_FAULT_STEP")
    if not fault_step or step != int(fault_step) or rank != int(
            os.environ.get("MLC_DIST_FAULT_RANK", "1")):
        return
    marker = storage.join(run_dir, f"fault_injected_step{step}")  # every node sees the run dir
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"")
    log.warning("fault injection: rank %d exits hard at step %d", rank, step)
    logging.shutdown()
    os._exit(1)  # no clean-up, like a preempted machine


class Worker:
    """One rank's run: model, engine, data shards, the TrainState and the checkpoints it reports."""

    def __init__(self, config: dict):
        import ray.train
        from transformers import set_seed

        self.job = job = JobConfig.model_validate(config["job"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        set_seed(job.train.seed)
        space = LabelSpace.from_dict(config["label_space"])
        path = config["tokenizer_path"]
        self.tokenizer = data.load_tokenizer(path) if path else None  # None: tabular
        pad_token_id = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        model = build_model(job.model, space, vocab_size=len(self.tokenizer) if path else None,
                            pad_token_id=pad_token_id, max_length=job.data.max_length,
                            num_features=len(job.data.feature_columns or []))
        if config["output_bias"] is not None:  # a checkpoint, when resuming, overwrites it
            with torch.no_grad():
                output_bias(model).copy_(torch.tensor(config["output_bias"]))
        self.total_steps = config["num_training_steps"]
        # Micro-batches per epoch on each rank (fit.batches_per_epoch): where an epoch ends when
        # the run's final step lands on its last batch.
        self.batches_per_epoch = config.get("batches_per_epoch")
        self.validation_stats = config.get("validation_stats")  # rows and positives, to check
        self.engine = strategy.prepare(model, job.train, self.total_steps,
                                       job.deepspeed_config() if job.train.strategy == "deepspeed"
                                       else None, num_shapes=job.compile_shapes)
        self.outputs = OutputSchema(space, job.model.head)
        self.loss_fn = build_loss(self.outputs, config["pos_weight"]).to(self.engine.device)
        self.meta = ModelMeta(space, [0.5] * len(space), job.data.text_column,
                              job.data.text_pair_column, job.data.max_length, job.model.name,
                              job.model.kind, job.model.head, job.data.feature_columns,
                              job.data.text_template)
        self.collate = Collate(*data.padding_of(self.tokenizer), job.pad_multiple,
                               job.data.max_length)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("validation")
        self.progress = config.get("progress") if self.rank == 0 else None
        self.state = TrainState()
        self.last_eval: dict = {}  # probs/labels of the latest evaluation, saved for the report
        self.num_reports = 0
        self._loss_sum, self._loss_count, self._sent_at, self._tokens = 0.0, 0, 0.0, 0
        self.clock: StepClock | None = None  # the train loop's, once it runs
        self._timed_from: float | None = None  # train_time_s counts from here (None: paused)

    def resume(self) -> None:
        """Load the latest checkpoint Ray hands this attempt (or an older one, when it does not
        load), if any; raises NoCheckpointLoads when none does."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return

        def load(directory: str):
            self.engine.load(directory)
            return (torch.load(os.path.join(directory, STATE_FILE), weights_only=True),
                    read_rng(directory, self.rank))

        try:
            state, rng = resume.load_first_that_loads(checkpoint, load)
        except resume.NoCheckpointLoads as error:
            if self.rank == 0:
                resume.record_failure(checkpoint, error)
            raise
        self.state.load_state_dict(state)
        if rng is not None:
            restore_rng(rng)
        state = self.state
        state.resumed_from.append(state.global_step)
        if not self.patience_spent():  # a rerun with more patience (or none) trains on
            state.stopped_early_at = None
        if self.rank == 0:
            log.info("resumed from checkpoint at step %d (epoch %d, batch %d)", state.global_step,
                     state.epoch, state.batches_done)

    def record_placement(self) -> None:
        """Which node each rank runs on, what wraps the model (this attempt): metrics.json."""
        import ray

        self.state.engine = self.engine.description
        node = ray.get_runtime_context().get_node_id()
        nodes = [node]
        if dist.is_initialized() and dist.get_world_size() > 1:
            nodes = [None] * dist.get_world_size()
            dist.all_gather_object(nodes, node)
        self.state.worker_nodes = nodes

    def batches(self):
        """This epoch's batches not yet trained (a mid-epoch resume skips what it holds)."""
        done = self.state.batches_done
        self._loss_sum, self._loss_count = 0.0, 0  # the loss window never spans epochs
        for i, batch in enumerate(train_batches(self.train_shard, self.job.train, self.collate,
                                                self.state.epoch,
                                                self.engine.device.type == "cuda")):
            if i >= done:
                yield batch

    def train_step(self, batch: dict) -> bool:
        """Forward and backward of one micro-batch; True when it completed an optimizer step."""
        engine, state = self.engine, self.state
        # Ray's iterator already moved the batch (non_blocking, from pinned memory on a GPU).
        batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        with engine.accumulate():
            with engine.autocast():  # the forward only; backward runs in the forward's dtypes
                logits = engine.model(**batch).logits  # [B, num_outputs]
            loss = self.loss_fn(logits.float(), labels)
            engine.backward(loss)
        state.batches_done += 1
        state.train_samples += len(labels) * self.world
        # No host sync per step: loss and token sums stay on the device until a log step.
        self._tokens = self._tokens + batch.get("attention_mask", labels).sum()
        self._loss_sum, self._loss_count = self._loss_sum + loss.detach(), self._loss_count + 1
        if not engine.step():
            return False
        state.global_step += 1
        return True

    def at_epoch_end(self) -> bool:
        """This epoch's last micro-batch is trained (its end_epoch() not yet run)."""
        return bool(self.batches_per_epoch) and self.state.batches_done >= self.batches_per_epoch

    def finished(self) -> bool:
        s, tcfg = self.state, self.job.train
        return (s.epoch >= tcfg.epochs or s.global_step >= self.total_steps
                or s.stopped_early_at is not None)

    def start_timing(self) -> None:
        self._timed_from = time.perf_counter()

    def count_time(self, pause: bool = False) -> None:
        """Add the time since the last count to train_time_s: the epoch loop's time, its
        mid-epoch evaluations and checkpoints included, the epoch-end evaluation not (`pause`
        at the loop's end). Counted at every checkpoint, so each one holds the time so far."""
        if self._timed_from is None:
            return
        now = time.perf_counter()
        self.state.train_time_s += now - self._timed_from
        self._timed_from = None if pause else now

    def patience_spent(self) -> bool:
        patience = self.job.train.early_stopping_patience
        return bool(patience) and self.state.evals_since_best >= patience

    def track_best(self, figures: dict) -> None:
        """Model selection and early stopping: is this evaluation the best of checkpoint_metric
        so far (by more than early_stopping_min_delta)? Otherwise one more without improvement;
        `patience` of those in a row stop the run."""
        tcfg, state = self.job.train, self.state
        metric, mode = tcfg.checkpoint_metric, tcfg.checkpoint_mode
        if not metric or state.last_eval_step == state.global_step:
            return  # nothing to select by; or the same weights evaluated again
        state.last_eval_step = state.global_step
        value = {**figures, "step": state.global_step, "epoch": state.epoch}.get(metric)
        value = float(value) if isinstance(value, (int, float)) else math.nan
        best = state.best
        if best is not None and (best["metric"], best["mode"]) != (metric, mode):
            best, state.evals_since_best = None, 0  # a rerun that selects by something else
        delta = tcfg.early_stopping_min_delta
        if not math.isnan(value) and (best is None or (
                value > best["value"] + delta if mode == "max" else value < best["value"] - delta)):
            state.best = {"metric": metric, "mode": mode, "value": value,
                          "step": state.global_step}
            state.evals_since_best = 0
            return
        state.evals_since_best += 1
        # Patience spent at the run's last evaluation is no early stop: nothing was left to train.
        if self.patience_spent() and state.stopped_early_at is None and not self.finished():
            state.stopped_early_at = state.global_step
            if self.rank == 0:
                log.info("early stopping at step %d: %s has not improved on %s (step %s) in %d "
                         "evaluations", state.global_step, metric,
                         best and f"{best['value']:.6g}", best and best["step"],
                         state.evals_since_best)

    def end_epoch(self) -> None:
        if self.engine.step(flush=True):  # a partial accumulation window at the epoch's end
            self.state.global_step += 1
        self.state.epoch += 1
        self.state.batches_done = 0

    def log_step(self) -> None:
        """Record the mean loss since the last log step (every log_every_steps, and the last)."""
        state = self.state
        if state.global_step % self.job.train.log_every_steps and state.global_step < \
                self.total_steps:
            self.send_progress()
            return
        self.sync_counters()
        loss = float(self._loss_sum) / max(self._loss_count, 1)
        state.history.append({"step": state.global_step, "loss": loss, "lr": self.engine.lr})
        self._loss_sum, self._loss_count = 0.0, 0
        self.send_progress(loss=loss, lr=self.engine.lr, force=True)

    def tokens_seen(self):
        """Global tokens trained so far, without a host sync (a device tensor between syncs)."""
        return self.state.train_tokens + self._tokens * self.world

    def sync_counters(self) -> None:
        """Device-side counters into the state: one host sync, at log steps and checkpoints."""
        self.state.train_tokens = int(self.tokens_seen())
        self._tokens = 0
        if self.clock is not None:
            self.clock.sync()

    def send_progress(self, force: bool = False, **fields) -> None:
        """Rank 0 -> the driver's progress display; fire-and-forget, at most once a second."""
        if self.progress is None or not (force or time.monotonic() - self._sent_at >
                                         PROGRESS_INTERVAL_S):
            return
        self._sent_at = time.monotonic()
        s = self.state
        self.progress.push.remote({"step": s.global_step, "total": self.total_steps,
                                   "epoch": s.epoch, "samples": s.train_samples,
                                   "time": time.time(), **fields})

    def validate(self) -> dict:
        """val_* metrics on the whole validation set; tunes the thresholds the export stores."""
        tcfg = self.job.train
        probs, labels = evaluate(self.engine, self.val_shard, self.collate,
                                 tcfg.batch_size_per_worker * 2, self.rank, self.world,
                                 self.outputs)
        check_coverage(labels, self.validation_stats)
        if not self.outputs.is_binary:  # multi-category heads: argmax, no thresholds to tune
            figures = metrics.head_summary(self.outputs, labels, probs, self.meta.thresholds)
            return {f"val_{k}": v for k, v in figures.items()}
        # Identical on every rank (gathered arrays), so the exported thresholds agree.
        tuned = tune_thresholds(tcfg, labels, probs)
        self.meta.thresholds = tuned.values
        self.meta.extra.update(tuned.meta())  # how each came about, stored with the model
        self.last_eval = {"probs": probs, "labels": labels}
        tuned = metrics.summary(labels, probs, np.asarray(self.meta.thresholds))
        return {**{f"val_{k}": v for k, v in metrics.summary(labels, probs, 0.5).items()},
                "val_micro_f1_tuned": tuned["micro_f1"], "val_macro_f1_tuned": tuned["macro_f1"]}

    def report(self, eval_metrics: dict) -> None:
        """Checkpoint (every rank writes its part) and report to Ray Train (every rank)."""
        import ray.train

        state, tcfg = self.state, self.job.train
        self.num_reports += 1
        if eval_metrics:
            state.history.append({"step": state.global_step, **eval_metrics})
            self.track_best(eval_metrics)  # before the checkpoint, which saves its counters
            self.send_progress(force=True, **{k: v for k, v in eval_metrics.items()
                                              if isinstance(v, (int, float))})
        directory = self.save_checkpoint(self.last_eval if eval_metrics else None)
        if tcfg.checkpoint_metric and tcfg.checkpoint_metric not in eval_metrics:
            # A checkpoint-only report: NaN ranks below every scored one; Ray keeps the latest.
            eval_metrics = {**eval_metrics, tcfg.checkpoint_metric: float("nan")}
        ray.train.report({**eval_metrics, "step": state.global_step, "epoch": state.epoch},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))
        shutil.rmtree(directory, ignore_errors=True)

    def gather_data_wait(self) -> None:
        """Every rank's fraction of steady step time spent waiting on its data, in rank order,
        into the state rank 0 saves: one gather per checkpoint, none per step."""
        fraction = self.clock.data_wait_fraction() if self.clock is not None else None
        fractions = [fraction]
        if dist.is_initialized() and dist.get_world_size() > 1:
            fractions = [None] * dist.get_world_size()
            dist.all_gather_object(fractions, fraction)
        self.state.data_wait_fractions = fractions

    def save_checkpoint(self, val_arrays: dict | None) -> str:
        self.sync_counters()
        self.gather_data_wait()
        self.count_time()
        self.meta.extra["step"] = self.state.global_step  # the export says where it came from
        directory = tempfile.mkdtemp(prefix="mlc_ckpt_")
        weights = self.engine.export_state_dict()  # every rank: ZeRO-3 gathers shards to rank 0
        if self.rank == 0:
            save_export(os.path.join(directory, "model"), self.engine.module, self.tokenizer,
                        self.meta, weights)
            torch.save(self.state.state_dict(), os.path.join(directory, STATE_FILE))
            if val_arrays:
                np.savez_compressed(os.path.join(directory, VAL_FILE), **val_arrays)
        self.engine.save(directory, self.rank)
        save_rng(directory, self.rank)
        return directory


def train_loop_per_worker(config: dict) -> None:
    entered = time.time()
    logs.configure(config.get("verbosity", 0))
    w = Worker(config)
    try:
        w.resume()
    except resume.NoCheckpointLoads as error:
        log.error("%s", error)
        return  # not an error for Ray: a restart would only fail the same way
    w.record_placement()
    w.state.worker_start_time, w.state.ready_time = entered, time.time()  # this attempt's
    state, tcfg = w.state, w.job.train
    clock = w.clock = StepClock(state, tcfg.throughput_warmup_steps)
    w.engine.model.train()
    while not w.finished():
        w.start_timing()
        clock.epoch_start()
        for batch in clock.timed(w.batches()):  # times each wait for the next batch
            if not w.train_step(batch):
                continue  # inside a gradient accumulation window
            clock.step(w.tokens_seen())
            step = state.global_step
            maybe_inject_fault(step, w.rank, w.job.run_dir)
            w.log_step()
            if step >= w.total_steps:
                break
            if w.at_epoch_end():
                continue  # the epoch-end evaluation and checkpoint follow
            if tcfg.eval_every_steps and step % tcfg.eval_every_steps == 0:
                w.report(w.validate())
                if state.stopped_early_at is not None:
                    break  # that evaluation's checkpoint is the run's last
            elif tcfg.checkpoint_every_steps and step % tcfg.checkpoint_every_steps == 0:
                w.report({})
        else:
            w.end_epoch()
        if w.at_epoch_end():  # the run's final step was the epoch's last batch
            w.end_epoch()
        w.count_time(pause=True)
        if state.stopped_early_at is None:
            w.report(w.validate())
    if not w.num_reports:  # a rerun of a finished run: report its final state again
        w.report(w.validate())
