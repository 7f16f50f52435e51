"""The real layouts users have, read from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from mlc_dist import data
from mlc_dist.config import load_job

from ..conftest import REPO


def _job(name, shared_data, *overrides):
    root = str(shared_data)
    sets = [o.replace("{root}", root) for o in overrides]
    return load_job(REPO / "jobs" / name, sets)


def test_goemotions_list_layout(shared_data, ray_cluster):
    job = _job("goemotions.yaml", shared_data,
               "data.train={root}/goemotions/dev.tsv", "data.validation=null",
               "data.label_names_file={root}/goemotions/labels.txt")
    prepared = data.prepare(job.data, seed=0)
    assert len(prepared.label_space) == 28 and prepared.label_space.names[27] == "neutral"
    total = prepared.train_stats.num_rows + prepared.validation_stats.num_rows
    assert total + prepared.train_stats.num_empty_text + \
        prepared.validation_stats.num_empty_text == 5426
    assert prepared.validation_stats.num_rows == pytest.approx(543, abs=5)
    # Every label id in the file lands in the multi-hot: ~1.18 labels per comment overall.
    positives = np.add(prepared.train_stats.positives, prepared.validation_stats.positives)
    assert 1.1 < positives.sum() / total < 1.3
    row = prepared.validation.take(1)[0]
    assert set(row) >= {"text", "labels", "id"} and len(row["labels"]) == 28


def test_valueeval_labels_file_and_three_text_columns(shared_data, ray_cluster):
    from mlc_dist.data import textspec

    job = textspec.resolve_job(_job("valueeval.yaml", shared_data,
                                    "data.train={root}/valueeval/arguments-validation.tsv",
                                    "data.train_labels={root}/valueeval/labels-validation.tsv",
                                    "data.validation=null", "data.validation_labels=null"))
    assert job.data.text_template == "{Conclusion} [SEP] {Stance} [SEP] {Premise}"
    prepared = data.prepare(job.data, seed=0)
    assert len(prepared.label_space) == 20
    assert prepared.label_space.names[0] == "Self-direction: thought"
    assert prepared.train_stats.num_rows + prepared.validation_stats.num_rows == 1896
    rows = prepared.train.take(3)
    for r in rows:  # conclusion [SEP] stance [SEP] premise, each part there
        conclusion, stance, premise = r["text"].split(" [SEP] ")
        assert conclusion and premise and stance in ("in favor of", "against"), r["text"]
    labels_per_argument = (sum(prepared.train_stats.positives) + sum(
        prepared.validation_stats.positives)) / 1896
    assert 2.5 < labels_per_argument < 4.5
