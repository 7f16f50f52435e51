"""Ray Train fine-tuning: train_loop_per_worker(config) on each worker, fit(job) on the driver.

Owns the step loop, evaluation gathering, checkpoints and the final export. Model building,
parallel wrapping and metrics live in their own modules.
"""

from __future__ import annotations

import json
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

from mlc_dist import data, metrics, strategy
from mlc_dist.artifacts import ModelMeta, read_meta, save_export
from mlc_dist.config import JobConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.losses import build_objective
from mlc_dist.models import build_model, output_bias, resolve_model_path

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
VAL_FILE = "validation_predictions.npz"  # probs + labels of the last evaluation, for the report


class Collate(NumpyBatchCollateFn):
    """Ragged token rows -> padded CPU tensors, padded to this batch's longest row."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.from_numpy(v) for k, v in data.pad_batch(batch, self.pad_token_id).items()}
        out["labels"] = torch.from_numpy(np.asarray(batch[data.LABELS], dtype=np.float32))
        return out


def _gather(array: np.ndarray) -> np.ndarray:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@torch.inference_mode()
def evaluate(engine, shard, collate: Collate, batch_size: int, rank: int, world: int, objective):
    """Probabilities and labels for the whole validation set, on every rank.

    Every rank reads the full (unsplit) validation set and runs the model on every world-th batch,
    so no row is dropped or counted twice, then the parts are gathered.
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
        probs.append(objective.probabilities(forward(batch).float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
    # ZeRO-3 gathers parameters inside every forward (a collective): all ranks run as many.
    for _ in range(math.ceil(num_batches / world) - len(probs)):
        forward(filler)
    engine.model.train()
    cat = lambda xs, n: np.concatenate(xs) if xs else np.zeros((0, n), np.float32)  # noqa: E731
    return (_gather(cat(probs, objective.num_outputs)),
            _gather(cat(labels, len(objective.names))))


class StepClock:
    """Time to the first optimizer step, and throughput after the first `warmup` steps.

    Steady figures sum only the gaps between consecutive steps of one epoch, so evaluation,
    checkpoints and epoch ends never count as training time.
    """

    def __init__(self, state: dict, warmup: int):
        self.state, self.warmup, self.steps, self.mark = state, warmup, 0, None
        state.update(loop_start_time=time.time(), first_step_time=None, steady_time_s=0.0,
                     steady_samples=0, steady_tokens=0)

    def epoch_start(self) -> None:
        self.mark = None

    def step(self) -> None:
        state, now = self.state, time.time()
        self.steps += 1
        if state["first_step_time"] is None:
            state["first_step_time"] = now
        if self.mark is not None and self.steps > self.warmup:
            state["steady_time_s"] += now - self.mark[0]
            state["steady_samples"] += state["train_samples"] - self.mark[1]
            state["steady_tokens"] += state["train_tokens"] - self.mark[2]
        self.mark = (now, state["train_samples"], state["train_tokens"])


def train_batches(shard, tcfg, collate: Collate, epoch: int):
    """This epoch's training batches: Ray's local shuffle, then optional length bucketing."""
    shuffle = {"local_shuffle_buffer_size": tcfg.shuffle_buffer_rows or None,
               "local_shuffle_seed": tcfg.seed + epoch}
    if not tcfg.length_bucketing:
        return shard.iter_torch_batches(batch_size=tcfg.batch_size_per_worker, collate_fn=collate,
                                        prefetch_batches=2, **shuffle)
    windows = shard.iter_batches(batch_size=tcfg.batch_size_per_worker * data.BUCKET_WINDOW_BATCHES,
                                 batch_format="numpy", prefetch_batches=1, **shuffle)
    return map(collate, data.length_buckets(windows, tcfg.batch_size_per_worker, tcfg.seed + epoch))


def _save_checkpoint(engine, tokenizer, meta: ModelMeta, state: dict, rank: int,
                     val_arrays: dict | None = None) -> str:
    # Every rank writes its part and reports it; Ray merges the parts into one checkpoint.
    directory = tempfile.mkdtemp(prefix="mlc_ckpt_")
    weights = engine.export_state_dict()  # every rank: ZeRO-3 gathers shards to rank 0
    if rank == 0:  # tokenizer is None for tabular models
        save_export(os.path.join(directory, "model"), engine.module, tokenizer, meta, weights)
        torch.save(state, os.path.join(directory, STATE_FILE))
        if val_arrays:
            np.savez_compressed(os.path.join(directory, VAL_FILE), **val_arrays)
    engine.save(directory, rank)
    torch.save({"torch_rng": torch.get_rng_state()}, os.path.join(directory, f"rng_rank{rank}.pt"))
    return directory


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    from transformers import AutoTokenizer, set_seed

    job = JobConfig.model_validate(config["job"])
    tcfg = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    set_seed(tcfg.seed)
    space = LabelSpace.from_dict(config["label_space"])
    tokenizer_path = config["tokenizer_path"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path) if tokenizer_path else None
    pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
    model = build_model(job.model, space, vocab_size=len(tokenizer) if tokenizer else None,
                        pad_token_id=pad_token_id, max_length=job.data.max_length,
                        num_features=len(job.data.feature_columns or []))
    if config["output_bias"] is not None:  # a checkpoint, when resuming, overwrites it
        with torch.no_grad():
            output_bias(model).copy_(torch.tensor(config["output_bias"]))
    engine = strategy.prepare(model, tcfg, config["num_training_steps"],
                              job.deepspeed_config() if tcfg.strategy == "deepspeed" else None)
    objective = build_objective(space, job.model.head, config["pos_weight"]).to(engine.device)
    meta = ModelMeta(space, [0.5] * len(space), job.data.text_column, job.data.text_pair_column,
                     job.data.max_length, job.model.name,
                     {"kind": job.model.kind, "head": job.model.head,
                      "feature_columns": job.data.feature_columns})
    collate = Collate(pad_token_id)

    state = {"global_step": 0, "epoch": 0, "batches_done": 0, "history": [], "train_time_s": 0.0,
             "train_samples": 0, "train_tokens": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            engine.load(directory)
            state = torch.load(os.path.join(directory, STATE_FILE), weights_only=True)
            rng_file = os.path.join(directory, f"rng_rank{rank}.pt")
            if os.path.exists(rng_file):
                torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch_rng"])
        state.setdefault("resumed_from", []).append(state["global_step"])
        if rank == 0:
            print(f"[mlc-dist] resumed from checkpoint at step {state['global_step']} "
                  f"(epoch {state['epoch']}, batch {state['batches_done']})", flush=True)

    reported, last_eval = [], {}
    clock = StepClock(state, tcfg.throughput_warmup_steps)

    def report(eval_metrics: dict) -> None:
        reported.append(state["global_step"])
        if eval_metrics:
            state["history"].append({"step": state["global_step"], **eval_metrics})
        directory = _save_checkpoint(engine, tokenizer, meta, state, rank,
                                     last_eval if eval_metrics else None)
        if tcfg.checkpoint_metric and tcfg.checkpoint_metric not in eval_metrics:
            # A checkpoint-only report: NaN ranks below every scored one; Ray keeps the latest.
            eval_metrics = {**eval_metrics, tcfg.checkpoint_metric: float("nan")}
        ray.train.report({**eval_metrics, "step": state["global_step"], "epoch": state["epoch"]},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))
        shutil.rmtree(directory, ignore_errors=True)

    def validate() -> dict:
        probs, labels = evaluate(engine, val_shard, collate, tcfg.batch_size_per_worker * 2, rank,
                                 world, objective)
        if probs.shape != labels.shape:  # multi-category heads: argmax, no thresholds to tune
            return {f"val_{k}": v for k, v in objective.summary(labels, probs,
                                                              meta.thresholds).items()}
        # Identical on every rank (gathered arrays), so the exported thresholds agree.
        meta.thresholds = metrics.tune_thresholds(labels, probs, tcfg.threshold_strategy,
                                                  tcfg.threshold_beta, tcfg.threshold)
        last_eval.update(probs=probs, labels=labels)
        tuned = metrics.summary(labels, probs, np.asarray(meta.thresholds))
        return {**{f"val_{k}": v for k, v in metrics.summary(labels, probs, 0.5).items()},
                "val_micro_f1_tuned": tuned["micro_f1"], "val_macro_f1_tuned": tuned["macro_f1"]}

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    total = config["num_training_steps"]
    engine.model.train()
    while state["epoch"] < tcfg.epochs and state["global_step"] < total:
        batches = train_batches(train_shard, tcfg, collate, state["epoch"])
        start, window_loss, window_n = time.perf_counter(), 0.0, 0
        clock.epoch_start()
        for i, batch in enumerate(batches):
            if i < state["batches_done"]:  # mid-epoch resume: skip what the checkpoint holds
                continue
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with engine.accumulate():
                logits = engine.model(**batch).logits  # [B, num_labels]
                loss = objective.loss(logits.float(), labels)
                engine.backward(loss)
            state["batches_done"] += 1
            state["train_samples"] += len(labels) * world
            state["train_tokens"] += int(batch.get("attention_mask", labels).sum()) * world
            window_loss, window_n = window_loss + loss.item(), window_n + 1
            if not engine.step():
                continue
            state["global_step"] += 1
            clock.step()
            step = state["global_step"]
            maybe_inject_fault(step, rank, job.run_dir)
            if step % tcfg.log_every_steps == 0 or step == total:
                state["history"].append({"step": step, "loss": window_loss / window_n,
                                         "lr": engine.lr})
                if rank == 0:
                    print(f"[mlc-dist] step {step}/{total} epoch {state['epoch']} "
                          f"loss {window_loss / window_n:.4f} lr {engine.lr:.2e}", flush=True)
                window_loss, window_n = 0.0, 0
            if step >= total:
                break
            if tcfg.eval_every_steps and step % tcfg.eval_every_steps == 0:
                report(validate())
            elif tcfg.checkpoint_every_steps and step % tcfg.checkpoint_every_steps == 0:
                report({})
        else:
            if engine.step(flush=True):
                state["global_step"] += 1
            state["epoch"] += 1
            state["batches_done"] = 0
        state["train_time_s"] += time.perf_counter() - start
        report(validate())
    if not reported:  # a rerun of a finished run: report its final state again
        report(validate())


def maybe_inject_fault(step: int, rank: int, run_dir: str) -> None:
    """Drills: MLC_DIST_FAULT_STEP=k kills rank MLC_DIST_FAULT_RANK (default 1) hard at step k.

    Once per run: a marker in the run directory stops the restarted workers failing again.
    """
    fault_step = os.environ.get("MLC_DIST_FAULT_STEP")
    if not fault_step or step != int(fault_step) or rank != int(
            os.environ.get("MLC_DIST_FAULT_RANK", "1")):
        return
    marker = os.path.join(run_dir, f"fault_injected_step{step}")
    if os.path.exists(marker):
        return
    os.makedirs(run_dir, exist_ok=True)
    open(marker, "w").close()
    print(f"[mlc-dist] fault injection: rank {rank} exits hard at step {step}", flush=True)
    os._exit(1)  # no clean-up, like a preempted machine


def count_training_steps(job: JobConfig, num_rows: int) -> int:
    """Optimizer steps: per epoch each worker sees an equal share of rows (Ray's equal split)."""
    batches = math.ceil((num_rows // job.scaling.num_workers) / job.train.batch_size_per_worker)
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

    path = os.path.abspath(os.path.join(job.run_dir, "tokenizer"))
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        texts = (t for b in prepared.train.select_columns([data.TEXT]).iter_batches(
            batch_size=4096, batch_format="numpy") for t in b[data.TEXT])
        train_tokenizer(texts, job.model.vocab_size, path, job.data.max_length)
        print(f"[mlc-dist] trained a WordPiece tokenizer ({job.model.vocab_size} tokens) on "
              f"{job.data.train} -> {path}", flush=True)
    return path


def fit(job: JobConfig, fold: tuple[int, int] | None = None) -> dict:
    """Prepare data, run the TorchTrainer, export the model, write metrics.json and the report.

    `fold=(i, k)` validates on fold i of a k-fold stratified split of data.train (cv.py).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from mlc_dist.runs import claim_run_dir
    from mlc_dist.runtime import init_ray

    claim_run_dir(job)  # a rerun with other settings moves the old run aside instead of resuming
    init_ray(min_cpus=job.scaling.num_workers * job.scaling.cpus_per_worker)
    prepared = data.prepare(job.data, job.train.seed, fold)
    tokenizer_path = _tokenizer_path(job, prepared)
    datasets = {name: data.encode(ds, job.data, tokenizer_path, job.data.max_length,
                                  keep=[data.LABELS])
                for name, ds in (("train", prepared.train), ("validation", prepared.validation))}
    num_steps = count_training_steps(job, prepared.train_stats.num_rows)
    print(f"[mlc-dist] {prepared.train_stats.num_rows} training rows, "
          f"{prepared.validation_stats.num_rows} validation rows, {len(prepared.label_space)} "
          f"labels, {num_steps} optimizer steps on {job.scaling.num_workers} worker(s)", flush=True)
    run_dir = os.path.abspath(job.run_dir)
    pos_weight = prepared.pos_weight(job.train.pos_weight_max) if job.train.pos_weight else None
    bias = build_objective(prepared.label_space, job.model.head, pos_weight).prior_bias(
        prepared.train_stats.positives, prepared.train_stats.num_rows) \
        if job.train.output_bias_init == "prior" else None
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": job.model_dump(),
            "label_space": prepared.label_space.to_dict(),
            "num_training_steps": num_steps,
            "tokenizer_path": tokenizer_path,
            "pos_weight": pos_weight,
            "output_bias": bias,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
            resources_per_worker={"CPU": job.scaling.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=job.run.name, storage_path=os.path.abspath(job.run.output_dir),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=job.train.num_checkpoints_to_keep,
                checkpoint_score_attribute=job.train.checkpoint_metric,
                checkpoint_score_order=job.train.checkpoint_mode),
            failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
            # Drills and DeepSpeed settings from the driver's environment reach the workers.
            worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                             if k.startswith(("MLC_DIST_", "DS_"))}}),
        datasets=datasets,
        # preserve_order: the same rows reach the same worker in the same order on every run, so
        # skipping `batches_done` on resume continues the trajectory instead of reshuffling it.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options={"train": ingest}),
    )
    started, started_at = time.perf_counter(), time.time()
    result = trainer.fit()
    wall = time.perf_counter() - started
    with result.checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, STATE_FILE), weights_only=True)
        export_dir = os.path.join(run_dir, "model")
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(os.path.join(directory, "model"), export_dir)
        # Binary heads leave the last validation's predictions for the report; category heads not.
        val_file = os.path.join(directory, VAL_FILE)
        val = dict(np.load(val_file)) if os.path.exists(val_file) else None
    final = result.metrics
    thresholds = read_meta(export_dir).thresholds
    evaluation = metrics.report(val["labels"], val["probs"], thresholds,
                                prepared.label_space.names, job.train.threshold_beta) if val else None
    summary = {
        **{k: v for k, v in final.items() if k.startswith("val_")},
        "steps": state["global_step"],
        "epochs_completed": state["epoch"],
        "train_samples": state["train_samples"],
        "train_samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
        "train_tokens_per_s": state["train_tokens"] / max(state["train_time_s"], 1e-9),
        "wall_time_s": wall,
        # From trainer.fit() (worker start, model load, first batches) to the first optimizer step.
        "time_to_first_step_s": state["first_step_time"] - started_at
        if state.get("first_step_time") else None,
        "steady_samples_per_s": state["steady_samples"] / state["steady_time_s"]
        if state.get("steady_time_s") else None,
        "steady_tokens_per_s": state["steady_tokens"] / state["steady_time_s"]
        if state.get("steady_time_s") else None,
        "throughput_warmup_steps": job.train.throughput_warmup_steps,
        "num_workers": job.scaling.num_workers,
        "data": {"train": prepared.train_stats.to_dict(),
                 "validation": prepared.validation_stats.to_dict(),
                 "labels": list(prepared.label_space.names)},
        "history": state["history"],
        "resumed_from": state.get("resumed_from", []),  # steps this run restarted from
        "model_dir": export_dir,
        "thresholds": thresholds,
        "validation": evaluation,
    }
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if val is None:
        return summary
    from mlc_dist.report import write_report

    summary["report"] = write_report(
        os.path.join(run_dir, "report"), f"{job.run.name}: validation", evaluation, val["labels"],
        val["probs"], {"train": prepared.train_stats.positives,
                    "validation": prepared.validation_stats.positives}, state["history"])
    return summary
