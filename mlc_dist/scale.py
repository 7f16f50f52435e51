"""Scaling experiments: the same training job at several worker counts -> CSV, Markdown, PNG.

Owns the sweep and its figures (throughput, efficiency, time to first step, MFU); each run is an
ordinary train.fit with overrides.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile

from mlc_dist import storage
from mlc_dist.config import JobConfig, validate_job

#: Dense bf16/fp16 tensor-core peak TFLOP/s per GPU (vendor datasheets), matched on the CUDA name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 125.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}
COLUMNS = ["num_workers", "steps", "global_samples_per_s", "samples_per_s_per_worker",
           "scaling_efficiency", "tokens_per_s", "time_to_first_step_s", "mfu", "val_mean_auc"]


def peak_tflops(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    for key, value in PEAK_TFLOPS.items():
        if key in gpu_name.upper():
            return value
    return None


def _cuda_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)  # the one GPU Ray assigned (CUDA_VISIBLE_DEVICES)


def worker_gpu_name(use_gpu: bool, timeout_s: float = 300.0) -> str | None:
    """The GPU the training workers get, named by a Ray task that holds one (num_gpus=1), as a
    worker would: the driver may have no GPU, or another kind. None for a CPU job, a cluster
    with no GPU, or no answer within `timeout_s` (MFU is then left out)."""
    if not use_gpu:
        return None
    import logging

    import ray

    log = logging.getLogger(__name__)
    if not ray.cluster_resources().get("GPU"):
        log.warning("scaling.use_gpu, but the Ray cluster has no GPU: no GPU name, no MFU")
        return None
    ref = ray.remote(num_gpus=1, num_cpus=0)(_cuda_name).remote()
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        log.warning("no GPU free for %.0f s to read its name: no MFU", timeout_s)
        return None


def training_flops_per_token(model_name: str, seq_len: float) -> float:
    """6 x non-embedding parameters (forward + backward) plus attention, 12 x layers x width x T."""
    import torch
    from transformers import AutoConfig, AutoModel

    from mlc_dist.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model_name))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6.0 * params + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def forward_flops_per_token(model_name: str, seq_len: float) -> float:
    """A forward pass: a third of training's (2 x parameters + 4 x layers x width x T)."""
    return training_flops_per_token(model_name, seq_len) / 3.0


def utilisation(flops_per_token: float, tokens_per_s: float | None,
                gpu_name: str | None) -> float | None:
    """Model FLOPs utilisation of one GPU: achieved FLOP/s over its dense bf16/fp16 peak; None
    without a known GPU (CPU runs) or a rate."""
    peak = peak_tflops(gpu_name)
    if not peak or not tokens_per_s:
        return None
    return flops_per_token * tokens_per_s / (peak * 1e12)


def run_job(job: JobConfig, num_workers: int, steps: int, out_dir: str) -> JobConfig:
    tree = job.model_dump()
    tree["run"] = {"name": f"w{num_workers}", "output_dir": out_dir}
    tree["scaling"]["num_workers"] = num_workers
    # Fixed steps, however many epochs that takes; checkpoints only at the end.
    tree["train"].update(max_steps=steps, epochs=max(job.train.epochs, 1000),
                         eval_every_steps=None, checkpoint_every_steps=None)
    return validate_job(tree, "scale")


def sweep(job: JobConfig, workers: list[int], steps: int, peak: float | None = None) -> dict:
    """Train at each worker count (fresh runs, no resume) and write scaling.{csv,md,png}."""
    from mlc_dist.runtime import init_ray
    from mlc_dist.train import fit

    if not workers or min(workers) < 1:
        raise ValueError(f"--workers {workers}: expected positive counts, e.g. 1,2,4")
    if steps <= job.train.throughput_warmup_steps + 1:
        raise ValueError(f"--steps {steps}: must exceed train.throughput_warmup_steps "
                         f"({job.train.throughput_warmup_steps}) + 1 to measure anything")
    out_dir = job.run_dir + "-scale"  # beside the job's runs: local, or on the object store
    out_dir = out_dir if storage.is_uri(out_dir) else os.path.abspath(out_dir)
    init_ray(min_cpus=max(workers) * job.scaling.cpus_per_worker)
    gpu = worker_gpu_name(job.scaling.use_gpu)  # the workers' GPU, not the driver's
    peak = peak or peak_tflops(gpu)
    rows = []
    for n in workers:
        storage.delete_dir(storage.join(out_dir, f"w{n}"))  # our scratch run
        summary = fit(run_job(job, n, steps, out_dir))
        rows.append({"num_workers": n, "steps": summary["steps"],
                     "global_samples_per_s": summary["steady_samples_per_s"],
                     "tokens_per_s": summary["steady_tokens_per_s"],
                     "time_to_first_step_s": summary["time_to_first_step_s"],
                     "val_mean_auc": summary.get("val_mean_auc")})
        rows[-1]["seq_len"] = summary["steady_tokens_per_s"] / summary["steady_samples_per_s"]
    base = next((r for r in rows if r["num_workers"] == 1), rows[0])
    for r in rows:
        r["samples_per_s_per_worker"] = r["global_samples_per_s"] / r["num_workers"]
        r["scaling_efficiency"] = (r["global_samples_per_s"] / (base["global_samples_per_s"]
                                   * r["num_workers"] / base["num_workers"]))
        flops = training_flops_per_token(job.model.name, r["seq_len"]) * r["tokens_per_s"]
        r["mfu"] = flops / (peak * 1e12 * r["num_workers"]) if peak else None
    with tempfile.TemporaryDirectory() as local:
        paths = write_outputs(rows, local, gpu or "cpu", peak)
        table = open(paths["md"]).read()
        for path in paths.values():
            storage.write_bytes(storage.join(out_dir, os.path.basename(path)),
                                open(path, "rb").read())
    return {"rows": [{k: r[k] for k in COLUMNS} for r in rows], "table": table,
            **{k: storage.join(out_dir, os.path.basename(p)) for k, p in paths.items()}}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_outputs(rows: list[dict], out_dir: str, device: str, peak: float | None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"scaling.{k}") for k in ("csv", "md", "png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Scaling on {device} (peak {_fmt(peak)} TFLOP/s; steady state after warm-up steps)",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    n = [r["num_workers"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [r["global_samples_per_s"] for r in rows], "o-", label="measured")
    ax1.plot(n, [rows[0]["global_samples_per_s"] * k / n[0] for k in n], "--", label="linear")
    ax1.set(xlabel="workers", ylabel="global samples/s", title=f"Throughput ({device})")
    ax1.legend()
    ax2.plot(n, [r["scaling_efficiency"] for r in rows], "o-")
    ax2.set(xlabel="workers", ylabel="efficiency vs 1 worker", ylim=(0, 1.2),
            title="Scaling efficiency")
    for ax in (ax1, ax2):
        ax.set_xticks(n)  # worker counts only, no fractional workers
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
