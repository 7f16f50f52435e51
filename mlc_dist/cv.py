"""k-fold cross-validation: one full Ray Train run per multilabel-stratified fold, then mean/std.

Owns the fold loop and the aggregate only; each fold is train.fit on data.prepare's fold split.
"""

from __future__ import annotations

import logging

import numpy as np

from mlc_dist import storage, train
from mlc_dist.config import JobConfig

log = logging.getLogger(__name__)

# Figures aggregated across folds (from each fold's metrics.json "validation" block).
CV_METRICS = ("mean_auc", "micro_f1", "macro_f1", "micro_f1_tuned", "macro_f1_tuned",
              "samples_f1_tuned", "subset_accuracy_tuned", "hamming_loss_tuned")


def fold_job(job: JobConfig, index: int) -> JobConfig:
    """The run that validates on fold `index` (train.fold) of train.folds: `<name>-fold<i>`."""
    run = job.run.model_copy(update={"name": f"{job.run.name}-fold{index}"})
    return job.model_copy(update={"run": run,
                                  "train": job.train.model_copy(update={"fold": index})})


def aggregate(fold_summaries: list[dict]) -> dict:
    """Mean and (population) standard deviation per metric over the folds where it is defined."""
    out = {}
    for key in CV_METRICS:
        values = [s["validation"][key] for s in fold_summaries
                  if s["validation"].get(key) is not None]
        out[key] = ({"mean": float(np.mean(values)), "std": float(np.std(values)),
                     "folds": values} if values else None)
    return out


def cross_validate(job: JobConfig) -> dict:
    """Runs `<name>-fold<i>` for i < train.folds; writes `<run_dir>/cv_metrics.json`."""
    num_folds = job.train.folds
    if not num_folds:
        raise ValueError("train.folds is not set")
    summaries = []
    for index in range(num_folds):
        log.info("cross-validation fold %d/%d", index + 1, num_folds)
        summaries.append(train.fit(fold_job(job, index)))
    result = {"folds": num_folds, "metrics": aggregate(summaries),
              "runs": [s["model_dir"].rsplit("/", 1)[0] for s in summaries],
              "validation_rows": [s["data"]["validation"]["num_rows"] for s in summaries]}
    storage.write_json(storage.join(job.run_dir, "cv_metrics.json"), result)
    return result
