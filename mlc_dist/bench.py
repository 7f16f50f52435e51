"""Training benchmark: our path (Ray Train, dynamic padding, length bucketing) against the
tutorial recipe (HF Trainer, every example padded to max_length), same rows, same model.

Owns the comparison only; prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from mlc_dist import bench_rounds, data, metrics
from mlc_dist.data import textspec
from mlc_dist.config import JobConfig, validate_job
from mlc_dist.models import resolve_model_path


def _slice(src: str, dst: str, skip: int, rows: int, header: bool) -> str:
    """Rows [skip, skip + rows) of src (and its header line). Line-based on purpose: the
    benchmark's files are one row per line (GoEmotions TSV)."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        if header:
            out.write(next(f, ""))
        for i, line in enumerate(f):
            if i >= skip + rows:
                break
            if i >= skip:
                out.write(line)
    return dst


def subset_job(job: JobConfig, work: str, samples: int, val_rows: int) -> JobConfig:
    """The job on the first `samples` training rows and `val_rows` validation rows, 1 epoch.

    Without data.validation, the validation rows are the `val_rows` after those training rows.
    """
    validation = job.data.validation or job.data.train
    if not isinstance(job.data.train, str) or not isinstance(validation, str):
        raise ValueError("bench train needs data.train (and data.validation, if set) as single "
                         "CSV/TSV files")
    if data.detect_format([job.data.train], job.data.format) not in ("csv", "tsv"):
        raise ValueError(f"{job.data.train}: bench train reads CSV/TSV files line by line")
    tree = job.model_dump()
    ext = os.path.splitext(job.data.train)[1]
    tree["data"]["train"] = _slice(job.data.train, os.path.join(work, "train" + ext), 0, samples,
                                   job.data.header)
    tree["data"]["validation"] = _slice(validation, os.path.join(work, "val" + ext),
                                        0 if job.data.validation else samples, val_rows,
                                        job.data.header)
    tree["run"] = {"name": "bench", "output_dir": os.path.join(work, "runs")}
    tree["train"].update(epochs=1, max_steps=None, pos_weight=False, eval_every_steps=None,
                         checkpoint_every_steps=None)
    return validate_job(tree, "bench")


def run_ours(job: JobConfig) -> dict:
    from mlc_dist.train import fit

    s = fit(job)
    return {"samples_per_s": s["train_samples_per_s"], "tokens_per_s": s["train_tokens_per_s"],
            "val_auc": s["val_mean_auc"], "samples": s["train_samples"],
            "seconds_to_first_step": s["time_to_first_step_s"],
            **{f"startup_{k}": v for k, v in s["startup"].items()}}


def _rows(ds) -> tuple[list[str], np.ndarray]:
    frame = ds.select_columns([data.TEXT, data.LABELS]).to_pandas()
    return frame[data.TEXT].tolist(), np.stack(frame[data.LABELS].to_numpy()).astype(np.float32)


def run_hf_trainer(job: JobConfig, max_length: int) -> dict:
    """The copy-paste recipe: tokenizer(padding="max_length") + Trainer, on the same rows; on a
    GPU in the precision our workers resolve (train.precision auto: bf16 where native)."""
    import torch

    from mlc_dist.precision import resolve
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer,
                              TrainingArguments, set_seed)

    prepared = data.prepare(textspec.resolve_job(job).data, job.train.seed)
    (train_texts, train_y), (val_texts, val_y) = _rows(prepared.train), _rows(prepared.validation)
    path = resolve_model_path(job.model.name)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(texts, labels):
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
        return [{"input_ids": torch.tensor(enc["input_ids"][i]),
                 "attention_mask": torch.tensor(enc["attention_mask"][i]),
                 "labels": torch.tensor(labels[i])} for i in range(len(texts))]

    train_set, val_set = encode(train_texts, train_y), encode(val_texts, val_y)
    set_seed(job.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(prepared.label_space), problem_type="multi_label_classification")
    t = job.train
    cuda = torch.cuda.is_available()
    precision = resolve(t.precision, torch.device("cuda" if cuda else "cpu"))
    out = tempfile.mkdtemp(prefix="mlc_bench_hf_")
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=t.batch_size_per_worker,
        per_device_eval_batch_size=t.batch_size_per_worker * 2, learning_rate=t.lr,
        weight_decay=t.weight_decay, num_train_epochs=1,
        # transformers 5 dropped warmup_ratio: the same warm-up as ours, in steps.
        warmup_steps=int(t.warmup_ratio * -(-len(train_set) // t.batch_size_per_worker)),
        max_grad_norm=t.max_grad_norm or 0.0, lr_scheduler_type="linear", seed=t.seed,
        save_strategy="no", report_to=[], use_cpu=not cuda,
        bf16=cuda and precision == "bf16", fp16=cuda and precision == "fp16",
        logging_steps=50, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set)
    try:
        result = trainer.train()
        logits = trainer.predict(val_set).predictions
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seconds = result.metrics["train_runtime"]
    real_tokens = sum(int(x["attention_mask"].sum()) for x in train_set)
    return {"samples_per_s": len(train_set) / seconds, "tokens_per_s": real_tokens / seconds,
            "val_auc": metrics.mean_auc(val_y, 1 / (1 + np.exp(-logits))),
            "samples": len(train_set)}


def train_efficiency(model_name: str, gpu: str | None, runs: dict[str, dict]) -> dict:
    """`<name>_mfu` for each run (training FLOPs of its real tokens over the GPU's peak), with
    the GPU's name: None on CPU, so the keys are the same on every device."""
    from mlc_dist.scale import training_flops_per_token, utilisation

    out: dict = {"gpu": gpu}
    for name, run in runs.items():
        mfu = None
        if gpu and run.get("samples_per_s"):
            seq = run["tokens_per_s"] / run["samples_per_s"]
            mfu = utilisation(training_flops_per_token(model_name, seq), run["tokens_per_s"],
                              gpu)
        out[f"{name}_mfu"] = None if mfu is None else round(mfu, 4)
    return out


def bench_train(job: JobConfig, samples: int, val_rows: int, max_length: int = 128,
                repeats: int = bench_rounds.DEFAULT_REPEATS) -> dict:
    """On CPU: one Ray Train worker with every core against the Trainer in this process. With
    scaling.use_gpu: one GPU worker (the job's cpus_per_worker) against the Trainer recipe in a
    Ray task holding one GPU of the same cluster, so both train on a worker's GPU. Each of the
    `repeats` rounds runs both (ours first, on a run of its own); the figures are the medians
    over the rounds with their spread, the ratio taken within each round (bench_rounds)."""
    from mlc_dist.runtime import init_ray
    from mlc_dist.scale import worker_gpu_name

    use_gpu = job.scaling.use_gpu
    work = tempfile.mkdtemp(prefix="mlc_bench_")
    try:
        sub = subset_job(job, work, samples, val_rows)
        # CPU: one worker with every core, as the Trainer in this process has (Ray sets a
        # worker's torch threads to its CPU count). GPU: one worker as the job sizes it.
        cpus = sub.scaling.cpus_per_worker if use_gpu else (os.cpu_count() or 1)
        ours_job = validate_job({**sub.model_dump(),
                                 "train": {**sub.train.model_dump(), "length_bucketing": True},
                                 "data": {**sub.data.model_dump(), "max_length": max_length},
                                 "scaling": {**sub.scaling.model_dump(), "num_workers": 1,
                                             "cpus_per_worker": cpus}},
                                "bench")
        init_ray(min_cpus=ours_job.scaling.cpus_per_worker)
        gpu = worker_gpu_name(use_gpu)
        result = bench_rounds.combine(bench_rounds.run_rounds(
            lambda i: _train_round(ours_job, sub, i, max_length, gpu, cpus), repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    where = (f"1 GPU worker ({gpu or 'GPU'}, {cpus:g} CPUs)" if use_gpu else
             f"{cpus:g} CPUs")
    result.update({
        "val_rows": val_rows, "model": job.model.name,
        "batch_size": job.train.batch_size_per_worker, "max_length": max_length,
        "compared": (f"ours = 1 Ray Train worker (DDP engine, {where}) on a Ray cluster, "
                     "dynamic padding + length bucketing, Ray Data tokenizing; hf_trainer = "
                     "transformers Trainer " + ("in a Ray task holding one GPU" if use_gpu else
                                                "in the driver process") +
                     ", padding='max_length'. "
                     "samples/s = training loop time only (no startup, no evaluation); "
                     "tokens/s counts non-padding tokens for both; medians over the rounds"),
    })
    return result


def _train_round(ours_job: JobConfig, sub: JobConfig, i: int, max_length: int,
                 gpu: str | None, cpus: float) -> dict:
    """Both sides once: ours on a run of its own (a rerun of one name would resume it), then
    the Trainer recipe on the same rows."""
    import ray

    run = ours_job.model_dump()
    run["run"]["name"] = f"bench-{i}"
    started = time.perf_counter()
    ours = run_ours(validate_job(run, "bench"))
    ours_wall = time.perf_counter() - started
    if ours_job.scaling.use_gpu:
        hf = ray.get(ray.remote(num_gpus=1, num_cpus=cpus)(run_hf_trainer).remote(
            sub, max_length))
    else:
        hf = run_hf_trainer(sub, max_length)
    return {
        **train_efficiency(ours_job.model.name, gpu, {"ours": ours, "hf_trainer": hf}),
        "ours_samples_per_s": ours["samples_per_s"],
        "hf_trainer_samples_per_s": hf["samples_per_s"],
        "ratio": ours["samples_per_s"] / hf["samples_per_s"],
        "ours_val_auc": ours["val_auc"], "hf_trainer_val_auc": hf["val_auc"],
        "samples": hf["samples"], "ours_samples": ours["samples"],
        "ours_tokens_per_s": ours["tokens_per_s"], "hf_trainer_tokens_per_s": hf["tokens_per_s"],
        "ours_wall_s_incl_startup": ours_wall,
        "ours_seconds_to_first_step": ours["seconds_to_first_step"],
        # Where that time went (metrics.json's startup): driver, workers, model, first batch, step.
        **{f"ours_{k}": v for k, v in ours.items() if k.startswith("startup_")},
    }
