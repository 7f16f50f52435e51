"""metrics.py against scikit-learn, on random and edge-case inputs; threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (f1_score, fbeta_score, hamming_loss, multilabel_confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)

from mlc_dist import metrics

NAMES = ["a", "b", "c", "d", "e"]


def _random(seed=0, rows=300):
    rng = np.random.default_rng(seed)
    labels = (rng.random((rows, len(NAMES))) < [0.4, 0.2, 0.1, 0.05, 0.3]).astype(np.int8)
    probs = np.clip(labels * 0.3 + rng.random(labels.shape) * 0.7, 0, 1)
    return labels, probs


def test_report_matches_sklearn_on_random_inputs():
    labels, probs = _random()
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    out = metrics.report(labels, probs, thresholds, NAMES, beta=2.0)
    pred, tuned = (probs >= 0.5).astype(int), (probs >= np.array(thresholds)).astype(int)
    assert out["mean_auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"))
    for avg in ("micro", "macro", "weighted", "samples"):
        # A row with no true and no predicted label is an exact match: 1 in samples F1.
        kw = {"average": avg, "zero_division": 1.0 if avg == "samples" else 0.0}
        assert out[f"{avg}_f1"] == pytest.approx(f1_score(labels, pred, **kw))
        assert out[f"{avg}_f1_tuned"] == pytest.approx(f1_score(labels, tuned, **kw))
        assert out[f"{avg}_f2_tuned"] == pytest.approx(fbeta_score(labels, tuned, beta=2, **kw))
    # Exact match vs per-element error: two different numbers with two different names.
    assert out["subset_accuracy"] == pytest.approx(np.mean((labels == pred).all(axis=1)))
    assert out["hamming_loss"] == pytest.approx(hamming_loss(labels, pred))
    assert "accuracy" not in out
    p, r, f, s = precision_recall_fscore_support(labels, tuned)
    cms = multilabel_confusion_matrix(labels, tuned)
    for j, row in enumerate(out["per_label"]):
        assert row["label"] == NAMES[j] and row["threshold"] == thresholds[j]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[j], r[j], f[j]))
        assert row["support"] == s[j]
        assert row["auc"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]))
        assert row["confusion"] == cms[j].tolist()


def test_a_label_never_positive_is_undefined_not_zero():
    labels, probs = _random(1)
    labels[:, 2] = 0
    out = metrics.report(labels, probs, 0.5, NAMES)
    row = out["per_label"][2]
    assert row["auc"] is None and row["recall"] is None and row["f1"] is None
    assert row["support"] == 0
    # Macro F1 averages the four labels that have positives only.
    pred = (probs >= 0.5).astype(int)
    assert out["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro",
                                                     labels=[0, 1, 3, 4]))
    assert out["mean_auc"] == pytest.approx(np.mean([roc_auc_score(labels[:, j], probs[:, j])
                                                     for j in (0, 1, 3, 4)]))


def test_all_zero_labels():
    labels = np.zeros((20, 3), np.int8)
    probs = np.full((20, 3), 0.2)
    out = metrics.report(labels, probs, 0.5, NAMES[:3])
    assert out["mean_auc"] is None and out["macro_f1"] is None
    assert out["subset_accuracy"] == 1.0 and out["hamming_loss"] == 0.0
    assert all(r["f1"] is None and r["auc"] is None for r in out["per_label"])
    assert metrics.tune_thresholds(labels, probs).values == [0.5, 0.5, 0.5]


def test_perfect_and_inverted_predictions():
    labels, _ = _random(2)
    perfect = metrics.report(labels, labels.astype(float), 0.5, NAMES)
    assert perfect["mean_auc"] == 1.0 and perfect["macro_f1"] == 1.0
    assert perfect["subset_accuracy"] == 1.0 and perfect["hamming_loss"] == 0.0
    inverted = metrics.report(labels, 1.0 - labels, 0.5, NAMES)
    assert inverted["mean_auc"] == 0.0 and inverted["micro_f1"] == 0.0
    assert inverted["subset_accuracy"] == 0.0 and inverted["hamming_loss"] == 1.0
    assert all(r["precision"] == 0.0 for r in inverted["per_label"])


def test_per_label_thresholds_beat_one_half_when_the_best_is_elsewhere():
    # Label 0's scores sit in [0.1, 0.4] (positives higher), label 1's in [0.6, 0.9]: 0.5 is
    # wrong for both, the tuned thresholds separate them.
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 2)) < 0.3).astype(np.int8)
    probs = np.stack([0.1 + 0.2 * labels[:, 0] + 0.1 * rng.random(400),
                      0.6 + 0.2 * labels[:, 1] + 0.1 * rng.random(400)], axis=1)
    tuned = metrics.tune_thresholds(labels, probs, "per_label").values
    assert 0.2 < tuned[0] <= 0.4 and 0.7 < tuned[1] <= 0.9
    at_half = metrics.summary(labels, probs, 0.5)["macro_f1"]
    assert metrics.summary(labels, probs, np.array(tuned))["macro_f1"] == 1.0
    assert at_half < 0.5
    # One global threshold cannot fit both; it still maximizes micro F1 over the grid of scores.
    (g, g2) = metrics.tune_thresholds(labels, probs, "global").values
    assert g == g2
    best_micro = metrics.summary(labels, probs, g)["micro_f1"]
    for t in np.linspace(0.05, 0.95, 91):
        assert metrics.summary(labels, probs, t)["micro_f1"] <= best_micro + 1e-12
    assert metrics.tune_thresholds(labels, probs, "fixed", fixed=0.3).values == [0.3, 0.3]
    with pytest.raises(ValueError, match="threshold strategy"):
        metrics.tune_thresholds(labels, probs, "best")


def test_f2_tuning_favours_recall():
    labels, probs = _random(3)
    f1_t = np.array(metrics.tune_thresholds(labels, probs, beta=1.0).values)
    f2_t = np.array(metrics.tune_thresholds(labels, probs, beta=2.0).values)
    assert np.all(f2_t <= f1_t) and np.any(f2_t < f1_t)


def test_a_threshold_sits_halfway_between_two_validation_scores():
    # Positives score 0.9, 0.8, 0.7; negatives 0.6, 0.3, 0.1: every cut in (0.6, 0.7] is
    # perfect. The midpoint 0.65 keeps the same validation decisions; 0.7 (the score itself)
    # would call a new positive at 0.69 negative.
    labels = np.array([[1], [1], [1], [0], [0], [0]], np.int8)
    probs = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.1]])
    tuned = metrics.tune_thresholds(labels, probs)
    assert tuned.values == [pytest.approx(0.65)] and tuned.rules == ["tuned"]
    # The lowest score chosen (all positive): halfway to 0.
    assert metrics.tune_thresholds(np.ones((3, 1), np.int8), probs[:3]).values == \
        [pytest.approx(0.35)]
    # Ties: the cut sits below the tied scores, above the next lower one.
    tied = np.array([[0.8], [0.8], [0.8], [0.5], [0.2], [0.2]])
    assert metrics.tune_thresholds(labels, tied).values == [pytest.approx(0.65)]


def _rare_and_common(seed=0):
    """Label 0: 200 positives, clean separation around 0.4; label 1: 5 positives that happen to
    score low (a threshold of their own lands near 0.05)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((1000, 2), np.int8)
    labels[:200, 0] = 1
    labels[:5, 1] = 1
    probs = np.empty((1000, 2))
    probs[:, 0] = np.where(labels[:, 0] == 1, 0.45 + 0.5 * rng.random(1000),
                           0.35 * rng.random(1000))
    probs[:, 1] = 0.3 * rng.random(1000)
    probs[:5, 1] = [0.05, 0.06, 0.07, 0.31, 0.32]
    return labels, probs


def test_labels_below_min_support_fall_back_to_a_stated_rule():
    labels, probs = _rare_and_common()
    own = metrics.tune_thresholds(labels, probs)  # min_support 1: every label its own
    assert own.rules == ["tuned", "tuned"]
    # prevalence (the default): the rare label's cut calls exactly as many validation rows
    # positive as it has positives (5), halfway between the 5th and 6th highest scores.
    tuned = metrics.tune_thresholds(labels, probs, min_support=30)
    assert tuned.rules == ["tuned", "fallback_prevalence"] and tuned.support == [200, 5]
    top = np.sort(probs[:, 1])[::-1]
    assert tuned.values == [own.values[0], pytest.approx((top[4] + top[5]) / 2)]
    assert int((probs[:, 1] >= tuned.values[1]).sum()) == 5
    assert own.values[1] != tuned.values[1]
    # global: the micro-F threshold over every label; fixed: train.threshold.
    pooled = metrics.tune_thresholds(labels, probs, "global").values[0]
    glob = metrics.tune_thresholds(labels, probs, min_support=30, fallback="global")
    assert glob.values == [own.values[0], pooled] and glob.rules == ["tuned", "fallback_global"]
    fixed = metrics.tune_thresholds(labels, probs, min_support=30, fallback="fixed", fixed=0.4)
    assert fixed.values == [own.values[0], 0.4] and fixed.rules == ["tuned", "fallback_fixed"]
    with pytest.raises(ValueError, match="threshold fallback"):
        metrics.tune_thresholds(labels, probs, fallback="median")
    # A label with no validation positive has no prevalence to match: the global threshold.
    none = metrics.tune_thresholds(np.c_[labels[:, :1], np.zeros(1000, np.int8)], probs,
                                   min_support=30)
    assert none.rules == ["tuned", "fallback_global"] and none.values[1] == none.global_value
    # The report lists the fallbacks with the support they were decided on.
    out = metrics.report(labels, probs, tuned.values, ["common", "rare"], rules=tuned.meta())
    assert out["threshold_fallbacks"] == [{"label": "rare", "rule": "fallback_prevalence",
                                           "threshold": tuned.values[1], "validation_support": 5}]
    assert [r["threshold_rule"] for r in out["per_label"]] == ["tuned", "fallback_prevalence"]


def test_shrinkage_pulls_a_label_towards_the_global_threshold_by_its_support():
    labels, probs = _rare_and_common()
    own = metrics.tune_thresholds(labels, probs).values
    pooled = metrics.tune_thresholds(labels, probs, "global").values[0]
    shrunk = metrics.tune_thresholds(labels, probs, shrinkage=10.0)
    assert shrunk.rules == ["shrunk", "shrunk"]
    assert shrunk.values == [pytest.approx((200 * own[0] + 10 * pooled) / 210),
                             pytest.approx((5 * own[1] + 10 * pooled) / 15)]
