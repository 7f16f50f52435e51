"""Job builders shared by integration tests."""

from __future__ import annotations

from pathlib import Path

from mlc_dist.config import JobConfig, validate_job
from mlc_dist.demo import JIGSAW_LABELS, write_demo


_WRITTEN: dict[str, tuple[int, dict]] = {}  # folder -> (rows, paths) of its latest write


def demo_job(tmp: Path, model: str, rows: int = 600, name: str = "t", **sections) -> JobConfig:
    # Not rewritten when the folder already holds these rows: identical data rewritten still gets
    # new modification times, and a rerun on changed data (job.json's fingerprints) starts fresh.
    if _WRITTEN.get(str(tmp), (None,))[0] != rows:
        _WRITTEN[str(tmp)] = rows, write_demo(str(tmp / "data"), rows=rows, seed=1)
    paths = _WRITTEN[str(tmp)][1]
    tree = {
        "run": {"name": name, "output_dir": str(tmp / "runs")},
        "data": {"train": paths["train"], "text_column": "comment_text", "id_columns": ["id"],
                 "label_columns": list(JIGSAW_LABELS), "max_length": 64},
        "model": {"name": model},
        "train": {"epochs": 1, "batch_size_per_worker": 16, "lr": 1e-3, "log_every_steps": 2,
                  "warmup_ratio": 0.0},
        "scaling": {"num_workers": 2},
        "score": {"input": paths["score"], "output": str(tmp / "scores")},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return validate_job(tree)
