"""New config keys are validated; stratified folds partition the rows and keep label rates."""

from __future__ import annotations

import numpy as np
import pytest

from mlc_dist.config import JobConfigError, validate_job
from mlc_dist.data import stratified_split


@pytest.mark.parametrize("tree, message", [
    ({"train": {"folds": 2}, "data": {"validation": "v.csv"}}, "unset data.validation"),
    ({"evaluate": {"labels": "l.csv"}}, "data.id_columns"),
    ({"train": {"threshold_strategy": "best"}}, "train.threshold_strategy"),
    ({"train": {"folds": 1}}, "train.folds"),
    ({"evaluate": {"inputs": "a.csv"}}, "evaluate.inputs: unknown key"),
])
def test_bad_evaluation_keys_are_rejected(tree, message):
    with pytest.raises(JobConfigError, match=message):
        validate_job({"run": {"name": "x"}, **tree}, "job.yaml")


def test_k_folds_partition_the_keys_and_stratify():
    rng = np.random.default_rng(0)
    keys = np.array([f"r{i}" for i in range(300)])
    labels = (rng.random((300, 4)) < [0.4, 0.2, 0.1, 0.05]).astype(np.float32)
    folds = [stratified_split(keys, labels, 0.1, seed=7, fold=(i, 3)) for i in range(3)]
    assert set().union(*folds) == set(keys) and sum(len(f) for f in folds) == 300
    for fold in folds:
        rows = np.isin(keys, list(fold))
        assert abs(rows.sum() - 100) <= 2
        np.testing.assert_allclose(labels[rows].sum(0), labels.sum(0) / 3, atol=2)
    assert folds[0] == stratified_split(keys, labels, 0.1, seed=7, fold=(0, 3))  # reproducible
    with pytest.raises(ValueError, match="fold 3"):
        stratified_split(keys, labels, 0.1, seed=7, fold=(3, 3))
