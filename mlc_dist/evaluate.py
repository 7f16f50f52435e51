"""Evaluate an exported model on a labelled set: metrics.json, per-label CSV/Markdown, report.

Owns the evaluate command only: reading is data/'s, inference the scoring pipeline's, numbers
metrics.py's and plots report.py's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np

from mlc_dist import data, metrics, report, storage
from mlc_dist.artifacts import read_meta
from mlc_dist.config import JobConfig

log = logging.getLogger(__name__)


def collect(scored, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probs) [N, num_labels] from a scored dataset that kept the labels column."""
    labels, probs = [], []
    for batch in scored.iter_batches(batch_size=4096, batch_format="numpy"):
        labels.append(np.asarray(batch[data.LABELS], dtype=np.float32))
        probs.append(np.stack([batch[c] for c in columns], axis=1))
    if not labels:
        raise data.DataError("evaluate.input: no rows left to evaluate")
    return np.concatenate(labels), np.concatenate(probs)


def run(job: JobConfig) -> dict:
    """Score `evaluate.input` with `score.model` and write metrics at 0.5 and stored thresholds."""
    from mlc_dist.runtime import init_ray
    from mlc_dist.scoring import score_dataset

    input_paths = job.evaluate.input
    output = job.evaluate.output or storage.join(job.run_dir, "evaluation")
    output = output if storage.is_uri(output) else os.path.abspath(output)
    if not input_paths:
        raise ValueError("evaluate.input must be set (a labelled file in the data.* layout)")
    model_dir = job.score_model
    meta = read_meta(model_dir)
    names = list(meta.label_space.names)
    init_ray(min_cpus=job.score.num_actors or 1)
    cfg = meta.data_config(job.data)
    labels_table, num_unscored = None, 0
    if job.evaluate.labels:
        labels_table, num_unscored = data.drop_unscored(
            data.read_label_table(job.evaluate.labels, cfg), names)
        if num_unscored:
            log.info("skipped %d rows of %s whose labels are -1 (not scored)", num_unscored,
                     job.evaluate.labels)
    ds = data.read_labelled(input_paths, cfg, meta.label_space, labels_table=labels_table,
                            skip_unlabelled=labels_table is not None)
    scored = score_dataset(job, ds, model_dir, meta.max_length, [data.LABELS],
                           job.evaluate.batch_size or job.score.batch_size)
    labels, probs = collect(scored, meta.outputs.score_columns())
    evaluation = metrics.report(labels, probs, meta.thresholds, names, job.train.threshold_beta,
                                meta.threshold_rules)
    summary = {**evaluation, "model": model_dir, "input": input_paths,
               "labels_file": job.evaluate.labels, "num_skipped_unscored": num_unscored}
    page = write_outputs(output, summary, labels, probs, f"evaluation of {model_dir}")
    return {**summary, "report": page, "output": output}


def write_outputs(output: str, summary: dict, labels: np.ndarray, probs: np.ndarray,
                  title: str) -> str:
    """metrics.json, per_label.csv/.md and report/ under `output` (local or object store),
    written locally first; returns the report page's path."""
    with tempfile.TemporaryDirectory() as local:
        with open(os.path.join(local, "metrics.json"), "w") as f:
            json.dump(summary, f, indent=2)
        table = report.per_label_table(summary)
        table.to_csv(os.path.join(local, "per_label.csv"), index=False)
        with open(os.path.join(local, "per_label.md"), "w") as f:
            f.write(report.to_markdown(table))
        page = report.write_report(os.path.join(local, "report"), title, summary, labels, probs)
        storage.upload_dir(local, output)
    return storage.join(output, "report", os.path.basename(page))
