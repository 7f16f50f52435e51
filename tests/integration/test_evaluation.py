"""k-fold cross-validation and `evaluate` (Jigsaw test layout) on a real local Ray cluster."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from mlc_dist import cv, evaluate
from mlc_dist.artifacts import read_meta
from mlc_dist.demo import JIGSAW_LABELS, write_test

from .helpers import demo_job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MIN_SUPPORT = 12


@pytest.fixture(scope="module")
def folds(tmp_path_factory, tiny_bert, ray_cluster):
    tmp = tmp_path_factory.mktemp("folds")
    job = demo_job(tmp, tiny_bert, rows=300, name="cv",
                   train={"folds": 2, "max_steps": 4, "lr": 3e-3,
                          "threshold_min_support": MIN_SUPPORT},
                   scaling={"num_workers": 1})
    return job, cv.cross_validate(job)


def test_k_folds_give_k_runs_and_an_aggregate(folds):
    job, result = folds
    assert result["folds"] == 2 and len(result["runs"]) == 2
    assert [os.path.basename(r) for r in result["runs"]] == ["cv-fold0", "cv-fold1"]
    # The two validation folds partition the 300 rows.
    assert sum(result["validation_rows"]) == 300
    assert all(abs(n - 150) <= 10 for n in result["validation_rows"])
    saved = json.load(open(os.path.join(job.run_dir, "cv_metrics.json")))
    fold_figures = [json.load(open(os.path.join(r, "metrics.json")))["validation"]
                    for r in result["runs"]]
    for key in ("mean_auc", "macro_f1", "macro_f1_tuned", "subset_accuracy_tuned",
                "hamming_loss_tuned"):
        values = [f[key] for f in fold_figures]
        aggregate = saved["metrics"][key]
        assert aggregate["folds"] == pytest.approx(values), key
        assert aggregate["mean"] == pytest.approx(np.mean(values)), key
        assert aggregate["std"] == pytest.approx(np.std(values)), key


def test_training_tunes_exports_thresholds_and_writes_the_report(folds):
    _, result = folds
    run_dir = result["runs"][0]
    summary = json.load(open(os.path.join(run_dir, "metrics.json")))
    thresholds = read_meta(os.path.join(run_dir, "model")).thresholds
    assert len(thresholds) == len(JIGSAW_LABELS)
    assert any(t != 0.5 for t in thresholds)
    val = summary["validation"]
    # Every validation row evaluated exactly once (1 worker; test_pipeline checks 2).
    assert [row["support"] for row in val["per_label"]] == \
        summary["data"]["validation"]["positives"]
    # A label with fewer validation positives than threshold_min_support takes the prevalence
    # cut, and metrics.json lists it; the others are tuned on these very rows, so their F1
    # at the tuned threshold is never below 0.5's.
    positives = summary["data"]["validation"]["positives"]
    rare = [n for n, p in zip(JIGSAW_LABELS, positives) if p < MIN_SUPPORT]
    assert 0 < len(rare) < len(JIGSAW_LABELS), positives  # both rules exercised
    assert [f["label"] for f in summary["threshold_fallbacks"]] == rare
    # prevalence: halfway between the n-th and (n+1)-th highest validation scores (n positives),
    # from the predictions the exported (latest) checkpoint stored.
    from mlc_dist.train.worker import VAL_FILE

    val_file = sorted(glob.glob(os.path.join(run_dir, "checkpoint_*", VAL_FILE)))[-1]
    probs = np.load(val_file)["probs"]
    for j, row in enumerate(val["per_label"]):
        if row["label"] in rare:
            assert row["threshold_rule"] == "fallback_prevalence"
            top, n = np.sort(probs[:, j])[::-1], row["support"]
            assert row["threshold"] == pytest.approx((top[n - 1] + top[n]) / 2), row
        else:
            assert row["threshold_rule"] == "tuned"
            assert row["f1"] >= row["f1_at_0.5"] - 1e-9, row
    assert val["macro_f1_tuned"] >= val["macro_f1"] - 1e-9
    assert summary["val_macro_f1_tuned"] == pytest.approx(val["macro_f1_tuned"])
    assert sum(1 for h in summary["history"] if "val_mean_auc" in h) >= 1
    report_dir = os.path.join(run_dir, "report")
    for name in ("labels.png", "history.png", "confusion.png", "pr_curves.png",
                 "label_sets.png"):
        with open(os.path.join(report_dir, name), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, name
    page = open(os.path.join(report_dir, "report.html")).read()
    assert page.startswith("<!doctype html>") and 'src="pr_curves.png"' in page
    assert all(name in page for name in JIGSAW_LABELS)


def test_evaluate_on_the_jigsaw_test_layout(folds, tmp_path):
    job, result = folds
    paths = write_test(str(tmp_path / "jigsaw"), rows=120, seed=5)
    job = job.model_copy(update={
        "score": job.score.model_copy(update={"model": os.path.join(result["runs"][0], "model")}),
        "evaluate": job.evaluate.model_copy(update={
            "input": paths["test"], "labels": paths["test_labels"],
            "output": str(tmp_path / "eval")})})
    out = evaluate.run(job)
    assert 0 < paths["num_unscored"] < 120
    assert out["num_skipped_unscored"] == paths["num_unscored"]
    assert out["num_rows"] == 120 - paths["num_unscored"]
    saved = json.load(open(tmp_path / "eval" / "metrics.json"))
    for key in ("mean_auc", "micro_f1", "macro_f1", "micro_f1_tuned", "macro_f1_tuned",
                "subset_accuracy", "hamming_loss"):
        assert key in saved, key
    assert [r["label"] for r in saved["per_label"]] == list(JIGSAW_LABELS)
    thresholds = read_meta(os.path.join(result["runs"][0], "model")).thresholds
    assert [r["threshold"] for r in saved["per_label"]] == pytest.approx(thresholds)
    # Supports count only the scored rows (the -1 rows are gone).
    import pyarrow.csv as pacsv

    truth = pacsv.read_csv(paths["test_labels"]).to_pandas()
    truth = truth[truth["toxic"] != -1]
    assert [r["support"] for r in saved["per_label"]] == [int(truth[n].sum())
                                                          for n in JIGSAW_LABELS]
    csv_lines = open(tmp_path / "eval" / "per_label.csv").read().strip().splitlines()
    assert len(csv_lines) == 1 + len(JIGSAW_LABELS)
    assert os.path.isfile(tmp_path / "eval" / "per_label.md")
    with open(tmp_path / "eval" / "report" / "pr_curves.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
