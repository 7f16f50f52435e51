"""fit(job) on the driver: prepare data, run the TorchTrainer, export the model, write metrics.

Owns the driver side of a training run only; what each worker does is worker.py's.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from mlc_dist import data, logs, metrics, progress, storage
from mlc_dist.artifacts import read_meta, write_meta
from mlc_dist.config import JobConfig
from mlc_dist.data import textspec
from mlc_dist.losses import prior_bias
from mlc_dist.models import resolve_model_path
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.train import resume
from mlc_dist.train.state import TrainState
from mlc_dist.train.worker import STATE_FILE, VAL_FILE, train_loop_per_worker, tune_thresholds

log = logging.getLogger(__name__)


def batches_per_epoch(job: JobConfig, num_rows: int) -> int:
    """Micro-batches each worker trains per epoch: an equal share of rows (Ray's equal split)."""
    return math.ceil((num_rows // job.scaling.num_workers) / job.train.batch_size_per_worker)


def count_training_steps(job: JobConfig, num_rows: int) -> int:
    """Optimizer steps over the run: epochs of batches_per_epoch, or max_steps when fewer."""
    batches = batches_per_epoch(job, num_rows)
    per_epoch = max(1, math.ceil(batches / job.train.grad_accum_steps))
    total = per_epoch * job.train.epochs
    return min(total, job.train.max_steps) if job.train.max_steps else total


def _tokenizer_path(job: JobConfig, prepared: data.Prepared) -> str | None:
    """The checkpoint's tokenizer (hf), the given or a newly trained WordPiece one (encoder), or
    none (mlp). A trained tokenizer is saved under the run folder and reused by a rerun."""
    if job.model.kind == "mlp":
        return None
    if job.model.kind == "hf":
        return resolve_model_path(job.model.name)
    if job.model.tokenizer:
        return job.model.tokenizer
    from mlc_dist.models.encoder import train_tokenizer

    path = storage.join(run_dir(job), "tokenizer")
    if not storage.is_file(storage.join(path, "tokenizer.json")):
        texts = (t for b in prepared.train.select_columns([data.TEXT]).iter_batches(
            batch_size=4096, batch_format="numpy") for t in b[data.TEXT])
        with tempfile.TemporaryDirectory() as local:
            train_tokenizer(texts, job.model.vocab_size, local, job.data.max_length)
            with open(os.path.join(local, storage.CONTENT_FILE), "w") as f:
                f.write(storage.content_listing(local))
            storage.upload_dir(local, path)
        log.info("trained a WordPiece tokenizer (%d tokens) on %s -> %s", job.model.vocab_size,
                 job.data.train, path)
    return path


def run_dir(job: JobConfig) -> str:
    """The run's folder: a URI as given, a local path made absolute."""
    return job.run_dir if storage.is_uri(job.run_dir) else os.path.abspath(job.run_dir)


@dataclass
class Inputs:
    """What the workers get: the prepared data, its model inputs and the numbers derived from it."""

    prepared: data.Prepared
    tokenizer_path: str | None
    datasets: dict
    num_steps: int
    batches_per_epoch: int
    pos_weight: list[float] | None
    output_bias: list[float] | None


def prepare_inputs(job: JobConfig) -> Inputs:
    t = job.train
    fold = (t.fold, t.folds) if t.fold is not None else None
    prepared = data.prepare(job.data, t.seed, fold)
    tokenizer_path = _tokenizer_path(job, prepared)
    datasets = {name: data.encode(ds, job.data, tokenizer_path, job.data.max_length,
                                  keep=[data.LABELS])
                for name, ds in (("train", prepared.train), ("validation", prepared.validation))}
    num_steps = count_training_steps(job, prepared.train_stats.num_rows)
    log.info("%d training rows, %d validation rows, %d labels, %d optimizer steps on %d "
             "worker(s)", prepared.train_stats.num_rows, prepared.validation_stats.num_rows,
             len(prepared.label_space), num_steps, job.scaling.num_workers)
    pos_weight = prepared.pos_weight(t.pos_weight_max) if t.pos_weight else None
    bias = prior_bias(OutputSchema(prepared.label_space, job.model.head),
                      prepared.train_stats.positives, prepared.train_stats.num_rows,
                      pos_weight) if t.output_bias_init == "prior" else None
    return Inputs(prepared, tokenizer_path, datasets, num_steps,
                  batches_per_epoch(job, prepared.train_stats.num_rows), pos_weight, bias)


def build_trainer(job: JobConfig, inputs: Inputs, progress_sink=None):
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    # Copies of the context's options, as DataConfig's defaults are, without the deprecated
    # `exclude_resources` setter that default_ingest_options() calls (a warning per process).
    ingest = {name: copy.deepcopy(ray.data.DataContext.get_current().execution_options)
              for name in ("train", "validation")}
    # The same rows reach the same worker in the same order on every run, so skipping
    # `batches_done` on resume continues the trajectory instead of reshuffling it.
    ingest["train"].preserve_order = True
    # Every rank reads the whole validation set and keeps every world-th batch: only one order
    # on all ranks makes that each row exactly once.
    ingest["validation"].preserve_order = True
    t = job.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": job.model_dump(),
            "label_space": inputs.prepared.label_space.to_dict(),
            "num_training_steps": inputs.num_steps,
            "batches_per_epoch": inputs.batches_per_epoch,
            "tokenizer_path": inputs.tokenizer_path,
            "pos_weight": inputs.pos_weight,
            "output_bias": inputs.output_bias,
            "validation_stats": inputs.prepared.validation_stats.to_dict(),
            "progress": progress_sink,
            "verbosity": logs.verbosity(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
            resources_per_worker={"CPU": job.scaling.cpus_per_worker},
            placement_strategy=job.scaling.placement_strategy),
        run_config=ray.train.RunConfig(
            # Checkpoints go straight to the object store when output_dir is a URI (every node
            # reaches it; a multi-node run refuses local storage).
            name=job.run.name, storage_path=job.run.output_dir
            if storage.is_uri(job.run.output_dir) else os.path.abspath(job.run.output_dir),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.num_checkpoints_to_keep, checkpoint_score_attribute=t.checkpoint_metric,
                checkpoint_score_order=t.checkpoint_mode),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            # Ray Train's INFO lines (worker group, process group, checkpoint paths) go to its
            # log files only, unless --verbose.
            logging_config=ray.train.LoggingConfig(
                log_level="DEBUG" if logs.verbosity() >= logs.VERBOSE else "WARNING"),
            # Drills and DeepSpeed settings from the driver's environment reach the workers.
            worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                             if k.startswith(("MLC_DIST_", "DS_"))}}),
        datasets=inputs.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )


def export_checkpoint(checkpoint, run_dir: str,
                      tcfg=None) -> tuple[TrainState, str, dict | None]:
    """Copy the checkpoint's model to <run_dir>/model (local or object store); (its TrainState,
    that folder, the last validation's probs/labels, which only binary heads leave).

    With `tcfg`, the export's thresholds are tuned again from those stored predictions with the
    job's threshold settings: a rerun that changed them re-evaluates, but the checkpoint
    exported may be an earlier one, tuned under the old settings.
    """
    state = TrainState()
    with checkpoint.as_directory() as directory:
        state.load_state_dict(torch.load(os.path.join(directory, STATE_FILE), weights_only=True))
        val_file = os.path.join(directory, VAL_FILE)
        val = dict(np.load(val_file)) if os.path.exists(val_file) else None
        export_dir = storage.join(run_dir, "model")
        with tempfile.TemporaryDirectory() as tmp:
            source = _retuned(os.path.join(directory, "model"), val, tcfg, tmp)
            storage.publish_dir(source, export_dir)
    return state, export_dir, val


def _retuned(model_dir: str, val: dict | None, tcfg, tmp: str) -> str:
    """`model_dir`, or a copy under `tmp` whose thresholds follow `tcfg`, if they differ."""
    if val is None or tcfg is None:
        return model_dir
    meta = read_meta(model_dir)
    tuned = tune_thresholds(tcfg, val["labels"], val["probs"])
    if meta.thresholds == tuned.values and meta.threshold_rules and all(
            meta.extra.get(k) == v for k, v in tuned.meta().items()):
        return model_dir
    copy = os.path.join(tmp, "model")
    shutil.copytree(model_dir, copy)
    meta.thresholds = tuned.values
    meta.extra.update(tuned.meta())
    write_meta(copy, meta)
    log.info("export thresholds tuned again with the job's threshold settings")
    return copy


def read_state(checkpoint) -> TrainState:
    """A checkpoint's TrainState, reading that one file only (not the weights)."""
    state = TrainState()
    path = checkpoint.path.rstrip("/") + "/" + STATE_FILE
    with checkpoint.filesystem.open_input_file(path) as f:
        state.load_state_dict(torch.load(io.BytesIO(f.read()), weights_only=True))
    return state


def select_checkpoint(result, tcfg) -> tuple:
    """The checkpoint to export and the metrics it was reported with, and the selection made:
    with train.checkpoint_metric, the evaluated checkpoint with the best value of it (the earliest
    of equals; NaN and checkpoint-only reports never), else the latest."""
    metric, mode = tcfg.checkpoint_metric, tcfg.checkpoint_mode
    if not metric:
        return result.checkpoint, result.metrics, None

    def value(metrics: dict) -> float:
        v = metrics.get(metric)
        evaluated = any(k.startswith("val_") for k in metrics)
        return float(v) if evaluated and isinstance(v, (int, float)) else math.nan

    scored = [(c, m) for c, m in result.best_checkpoints or [] if not math.isnan(value(m))]
    if not scored:
        log.warning("no evaluated checkpoint reported %s: exporting the latest", metric)
        return result.checkpoint, result.metrics, None
    sign = -1 if mode == "max" else 1
    checkpoint, metrics = min(scored, key=lambda cm: (sign * value(cm[1]), cm[1].get("step", 0)))
    return checkpoint, metrics, {"metric": metric, "mode": mode, "value": value(metrics),
                                 "step": metrics.get("step")}


def _per_s(amount: float, seconds: float | None) -> float | None:
    return amount / seconds if seconds else None


def startup_figures(timing: dict, state: TrainState) -> dict:
    """Where the time before the first optimizer step went, in seconds, in order: the driver
    from fit() to the trainer's start (Ray, reading and splitting the data), Ray Train to rank
    0's training function (controller, placement, worker processes, imports), the model and
    engine (tokenizer, weights, DDP/DeepSpeed, resume), the first batch (Ray Data's first
    blocks through tokenizing), and the first step itself. None where not reached."""
    marks = [("driver_s", timing.get("fit_at")), ("workers_s", timing["started_at"]),
             ("model_s", state.worker_start_time), ("first_batch_s", state.ready_time),
             ("first_step_s", state.first_batch_time), (None, state.first_step_time)]
    return {name: round(end - start, 2) if start is not None and end is not None else None
            for (name, start), (_, end) in zip(marks, marks[1:])}


def data_wait_figures(state: TrainState) -> dict:
    """Of the steady step time, the fraction spent blocked on the next batch: rank 0's and the
    most any rank waited (the rank the input pipeline starves first); None before a steady step."""
    known = [f for f in state.data_wait_fractions if f is not None]
    return {"data_wait_fraction": state.data_wait_fractions[0] if state.data_wait_fractions
            else None, "data_wait_fraction_max": max(known, default=None)}


def summarize(job: JobConfig, prepared: data.Prepared, state: TrainState, exported: TrainState,
              final: dict, timing: dict, export_dir: str, thresholds: list[float],
              evaluation: dict | None, selection: dict | None, per_epoch: int) -> dict:
    """metrics.json: the exported checkpoint's val_* figures, thresholds and evaluation (`final`:
    what it was reported with; `exported`: its TrainState); the run's length, throughput and
    history from its latest TrainState (`state`); data statistics."""
    return {
        **{k: v for k, v in final.items() if k.startswith("val_")},
        "steps": state.global_step,  # trained (the latest checkpoint's step)
        "last_step": state.global_step,
        "exported_step": exported.global_step,  # where model/ comes from
        "selection": selection,  # {metric, mode, value, step} by train.checkpoint_metric, or None
        "stopped_early_at": state.stopped_early_at,
        "epochs_completed": state.epoch,
        "epochs_trained": state.epoch + state.batches_done / max(per_epoch, 1),
        "train_samples": state.train_samples,
        "train_samples_per_s": state.train_samples / max(state.train_time_s, 1e-9),
        "train_tokens_per_s": state.train_tokens / max(state.train_time_s, 1e-9),
        "wall_time_s": timing["wall"],
        # From trainer.fit() (worker start, model load, first batches) to the first optimizer step.
        "time_to_first_step_s": state.first_step_time - timing["started_at"]
        if state.first_step_time else None,
        "startup": startup_figures(timing, state),
        "steady_samples_per_s": _per_s(state.steady_samples, state.steady_time_s),
        "steady_tokens_per_s": _per_s(state.steady_tokens, state.steady_time_s),
        **data_wait_figures(state),
        "throughput_warmup_steps": job.train.throughput_warmup_steps,
        "num_workers": job.scaling.num_workers,
        "worker_nodes": state.worker_nodes,  # Ray node id of each rank
        "engine": state.engine,  # the wrapper the workers trained with, and its ZeRO stage
        "data": {"train": prepared.train_stats.to_dict(),
                 "validation": prepared.validation_stats.to_dict(),
                 "labels": list(prepared.label_space.names)},
        "history": state.history,
        "resumed_from": state.resumed_from,
        "model_dir": export_dir,
        "thresholds": thresholds,
        # Labels whose threshold is not their own (too few validation positives): which, and why.
        "threshold_fallbacks": evaluation["threshold_fallbacks"] if evaluation else None,
        "validation": evaluation,
    }


def fit(job: JobConfig) -> dict:
    """Train `job` (validating on fold `train.fold` of `train.folds` when set), export the model,
    write metrics.json and the report; returns the metrics."""
    from mlc_dist.runs import claim_run_dir
    from mlc_dist.runtime import init_ray

    fit_at = time.time()
    claim_run_dir(job)  # a rerun with other settings moves the old run aside instead of resuming
    init_ray(min_cpus=job.scaling.num_workers * job.scaling.cpus_per_worker)
    job = textspec.resolve_job(job)  # data.text_columns/text_template: the separator spelled out
    inputs = prepare_inputs(job)
    prepared, out_dir = inputs.prepared, run_dir(job)
    started, started_at = time.perf_counter(), time.time()
    resume.clear(out_dir)
    with progress.training(inputs.num_steps) as sink:
        result = build_trainer(job, inputs, sink).fit()
    resume.raise_if_resume_failed(out_dir)
    timing = {"wall": time.perf_counter() - started, "started_at": started_at, "fit_at": fit_at}
    checkpoint, final, selection = select_checkpoint(result, job.train)
    exported, export_dir, val = export_checkpoint(checkpoint, out_dir, job.train)
    state = exported if checkpoint.path == result.checkpoint.path else read_state(
        result.checkpoint)
    if selection:
        log.info("exported the checkpoint of step %d (%s %s=%.6g) of %d steps trained",
                 exported.global_step, selection["mode"], selection["metric"],
                 selection["value"], state.global_step)
    meta = read_meta(export_dir)
    thresholds = meta.thresholds
    evaluation = metrics.report(val["labels"], val["probs"], thresholds,
                                prepared.label_space.names, job.train.threshold_beta,
                                meta.threshold_rules) if val else None
    summary = summarize(job, prepared, state, exported, final, timing, export_dir, thresholds,
                        evaluation, selection, inputs.batches_per_epoch)
    storage.write_json(storage.join(out_dir, "metrics.json"), summary)
    if val is None:
        return summary
    from mlc_dist.report import write_report

    with tempfile.TemporaryDirectory() as local:
        page = write_report(local, f"{job.run.name}: validation (step {exported.global_step})",
                            evaluation, val["labels"],
                            val["probs"], {"train": prepared.train_stats.positives,
                                           "validation": prepared.validation_stats.positives},
                            state.history)
        storage.upload_dir(local, storage.join(out_dir, "report"))
    summary["report"] = storage.join(out_dir, "report", os.path.basename(page))
    return summary
