"""Pure metric functions on probabilities and multi-hot labels (numpy in, floats out).

Owns the numbers only, through scikit-learn; no torch, no Ray, no I/O.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score


def per_label_auc(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """ROC AUC per label; None where a label has only one class in `labels` (undefined)."""
    out: list[float | None] = []
    for j in range(labels.shape[1]):
        y = labels[:, j]
        out.append(float(roc_auc_score(y, probs[:, j])) if 0 < y.sum() < len(y) else None)
    return out


def mean_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean column-wise ROC AUC over the labels where it is defined (the Jigsaw metric)."""
    defined = [a for a in per_label_auc(labels, probs) if a is not None]
    return float(np.mean(defined)) if defined else None


def predict(probs: np.ndarray, thresholds: float | np.ndarray = 0.5) -> np.ndarray:
    return (probs >= np.asarray(thresholds)).astype(np.int8)


def summary(labels: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = 0.5) -> dict:
    """The headline figures logged during training."""
    y_true = labels.astype(np.int8)
    y_pred = predict(probs, thresholds)
    return {
        "mean_auc": mean_auc(labels, probs),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def category_summary(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Multi-category labels: (true indices, predicted indices) per label -> mean accuracy and
    mean macro-F1 over those labels."""
    from sklearn.metrics import accuracy_score

    return {
        "category_accuracy": float(np.mean([accuracy_score(t, p) for t, p in pairs])),
        "category_macro_f1": float(np.mean([f1_score(t, p, average="macro", zero_division=0)
                                            for t, p in pairs])),
    }
