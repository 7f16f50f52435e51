"""Pure metric functions on probabilities and multi-hot labels (numpy in, floats out).

Owns the numbers only, through scikit-learn; no torch, no Ray, no I/O. Labels without a
positive (or without a negative, for AUC) in the evaluated rows are undefined: None, never 0 or 1.
"""

from __future__ import annotations

import numpy as np

# scikit-learn is imported inside the functions that use it: it takes about a second to import,
# and the scoring actors, which only threshold (predict), start that much sooner without it.

THRESHOLD_STRATEGIES = ("per_label", "global", "fixed")


def per_label_auc(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """ROC AUC per label; None where a label has only one class in `labels` (undefined)."""
    from sklearn.metrics import roc_auc_score

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


def _none_where(values: np.ndarray, undefined: np.ndarray) -> list[float | None]:
    return [None if u else float(v) for v, u in zip(values, undefined)]


def averaged_f(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 1.0) -> dict:
    """Micro, macro, weighted and samples F-beta from 0/1 matrices.

    Macro and weighted average over the labels with at least one positive (sklearn's `labels=`),
    so a label absent from the split neither drags the mean to 0 nor lifts it to 1. Samples
    averages over rows; a row with no true and no predicted label counts as 1 (exact match).
    """
    from sklearn.metrics import fbeta_score

    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    out = {}
    for avg in ("micro", "macro", "weighted", "samples"):
        if avg in ("macro", "weighted") and len(present) == 0:
            out[avg] = None
            continue
        kw = {"labels": present} if avg in ("macro", "weighted") else {}
        out[avg] = float(fbeta_score(y_true, y_pred, beta=beta, average=avg,
                                     zero_division=1.0 if avg == "samples" else 0.0, **kw))
    return out


def per_label(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None) -> dict:
    """Per-label precision, recall, F1, support, AUC and 2x2 confusion [[tn, fp], [fn, tp]].

    Recall and F1 are None for a label with no positives; precision is None when nothing was
    predicted positive for it.
    """
    from sklearn.metrics import multilabel_confusion_matrix, precision_recall_fscore_support

    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None,
                                                       zero_division=0)
    no_pos, no_pred = support == 0, y_pred.sum(axis=0) == 0
    return {"precision": _none_where(p, no_pred), "recall": _none_where(r, no_pos),
            "f1": _none_where(f, no_pos), "support": [int(s) for s in support],
            "auc": per_label_auc(y_true, probs) if probs is not None else [None] * len(support),
            "confusion": multilabel_confusion_matrix(y_true, y_pred).tolist()}


def summary(labels: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = 0.5) -> dict:
    """The headline figures logged during training."""
    y_true = labels.astype(np.int8)
    f = averaged_f(y_true, predict(probs, thresholds))
    return {"mean_auc": mean_auc(labels, probs), "micro_f1": f["micro"], "macro_f1": f["macro"]}


def tune_thresholds(labels: np.ndarray, probs: np.ndarray, strategy: str = "per_label",
                    beta: float = 1.0, fixed: float = 0.5) -> list[float]:
    """Decision thresholds chosen on validation rows.

    per_label: each label's threshold maximizes its own F-beta; global: one threshold for all
    labels maximizes micro F-beta (micro F over a matrix is F over its flattened elements);
    fixed: `fixed` everywhere. A label with no positive keeps `fixed` (nothing to tune on).
    """
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"threshold strategy {strategy!r}: expected one of {THRESHOLD_STRATEGIES}")
    num_labels = labels.shape[1]
    if strategy == "fixed" or len(labels) == 0:
        return [float(fixed)] * num_labels
    if strategy == "global":
        return [_best_threshold(labels.ravel(), probs.ravel(), beta, fixed)] * num_labels
    return [_best_threshold(labels[:, j], probs[:, j], beta, fixed) for j in range(num_labels)]


def _best_threshold(y: np.ndarray, p: np.ndarray, beta: float, default: float) -> float:
    from sklearn.metrics import precision_recall_curve

    if y.sum() == 0:
        return float(default)
    # precision_recall_curve's thresholds are the distinct scores; predicting `p >= t` there.
    precision, recall, thresholds = precision_recall_curve(y, p)
    b2 = beta * beta
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.nan_to_num((1 + b2) * precision * recall / (b2 * precision + recall))
    return float(thresholds[int(np.argmax(f[:-1]))])


def report(labels: np.ndarray, probs: np.ndarray, thresholds: float | list[float] | np.ndarray,
           names: list[str] | tuple[str, ...], beta: float = 1.0) -> dict:
    """Everything an evaluation reports, at 0.5 and at `thresholds` side by side.

    `subset_accuracy` is the exact-match ratio (all labels of a row right); `hamming_loss` is
    the fraction of wrong label decisions. Per-element accuracy (1 - hamming_loss) is never
    called "accuracy".
    """
    from sklearn.metrics import hamming_loss

    y_true = labels.astype(np.int8)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),))
    out: dict = {"num_rows": int(len(y_true)), "mean_auc": mean_auc(y_true, probs)}
    for suffix, t in (("", 0.5), ("_tuned", thresholds)):
        y_pred = predict(probs, t)
        for avg, value in averaged_f(y_true, y_pred).items():
            out[f"{avg}_f1{suffix}"] = value
        if beta != 1.0:
            for avg, value in averaged_f(y_true, y_pred, beta).items():
                out[f"{avg}_f{beta:g}{suffix}"] = value
        out[f"subset_accuracy{suffix}"] = float(np.mean(np.all(y_true == y_pred, axis=1))) \
            if len(y_true) else None
        out[f"hamming_loss{suffix}"] = float(hamming_loss(y_true, y_pred)) if len(y_true) else None
    at_half = per_label(y_true, predict(probs, 0.5), probs)
    tuned = per_label(y_true, predict(probs, thresholds), probs)
    out["per_label"] = [
        {"label": name, "threshold": float(thresholds[j]), "support": tuned["support"][j],
         "auc": tuned["auc"][j], "precision": tuned["precision"][j], "recall": tuned["recall"][j],
         "f1": tuned["f1"][j], "f1_at_0.5": at_half["f1"][j], "confusion": tuned["confusion"][j]}
        for j, name in enumerate(names)]
    return out


def category_summary(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Multi-category labels: (true indices, predicted indices) per label -> mean accuracy and
    mean macro-F1 over those labels."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "category_accuracy": float(np.mean([accuracy_score(t, p) for t, p in pairs])),
        "category_macro_f1": float(np.mean([f1_score(t, p, average="macro", zero_division=0)
                                            for t, p in pairs])),
    }


def head_summary(schema, labels: np.ndarray, probs: np.ndarray, thresholds) -> dict:
    """`summary` for any head's outputs (`schema`: models.outputs.OutputSchema).

    Binary labels: the usual AUC/F1 on P(positive). Multi-category labels: accuracy and macro-F1
    of the argmax per label, averaged over those labels.
    """
    if schema.is_binary:
        return summary(labels, probs, thresholds)
    categories = schema.label_space.categories
    binary = [j for j, name in enumerate(schema.names) if name not in categories]
    out = {}
    if binary:
        p1 = np.stack([probs[:, schema.offsets[j] + 1] for j in binary], axis=1)
        out.update(summary(labels[:, binary], p1, np.asarray(thresholds)[binary]))
    pairs = [(labels[:, j].astype(int), block.argmax(1)) for j, name, block in schema.blocks(probs)
             if name in categories]
    if pairs:
        out.update(category_summary(pairs))
    return out
