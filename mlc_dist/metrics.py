"""Pure metric functions on probabilities and multi-hot labels (numpy in, floats out).

Owns the numbers only, through scikit-learn; no torch, no Ray, no I/O. Labels without a
positive (or without a negative, for AUC) in the evaluated rows are undefined: None, never 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# scikit-learn is imported inside the functions that use it: it takes about a second to import,
# and the scoring actors, which only threshold (predict), start that much sooner without it.

THRESHOLD_STRATEGIES = ("per_label", "global", "fixed")
THRESHOLD_FALLBACKS = ("prevalence", "global", "fixed")


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


@dataclass
class Thresholds:
    """Tuned decision thresholds, and how each came about (stored with the model, listed in
    metrics.json and the report).

    rules[j]: "tuned" (the label's own validation F-beta), "shrunk" (its own, pulled towards the
    global threshold), "fallback_prevalence" / "fallback_global" / "fallback_fixed" (fewer
    validation positives than min_support: see tune_thresholds), "global" or "fixed" (strategy).
    """

    values: list[float]
    rules: list[str]
    support: list[int]  # validation positives per label
    global_value: float | None = None  # the one threshold with the best micro F-beta

    def meta(self) -> dict:
        """What an export's metadata keeps besides the values (ModelMeta.extra)."""
        return {"threshold_rules": self.rules, "threshold_support": self.support}


def tune_thresholds(labels: np.ndarray, probs: np.ndarray, strategy: str = "per_label",
                    beta: float = 1.0, fixed: float = 0.5, min_support: int = 1,
                    fallback: str = "prevalence", shrinkage: float = 0.0) -> Thresholds:
    """Decision thresholds chosen on validation rows.

    per_label: each label's threshold maximizes its own F-beta, if it has at least
    `min_support` positives; otherwise it falls back to `fallback`:
      prevalence: the cut that calls as many validation rows positive as the label has
        positives (n), halfway between the n-th and (n+1)-th highest scores: set by every
        validation row's score, not by where a handful of positives landed, and it cannot
        flood (a label with no positive gets the global threshold);
      global: the micro-F threshold over all labels (below); fixed: `fixed`.
    With `shrinkage` k > 0 a label with n positives gets (n * own + k * global) / (n + k).
    global: one threshold for all labels maximizes micro F-beta (micro F over a matrix is F
    over its flattened elements). fixed: `fixed` everywhere.
    A threshold sits halfway between the validation score it was chosen at and the next lower
    one (same validation decisions; a new row between the two is not decided by where the
    last positive happened to land).
    """
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"threshold strategy {strategy!r}: expected one of {THRESHOLD_STRATEGIES}")
    if fallback not in THRESHOLD_FALLBACKS:
        raise ValueError(f"threshold fallback {fallback!r}: expected one of {THRESHOLD_FALLBACKS}")
    num_labels = labels.shape[1]
    support = [int(n) for n in labels.sum(axis=0)] if len(labels) else [0] * num_labels
    if strategy == "fixed" or len(labels) == 0 or labels.sum() == 0:  # nothing to tune on
        rule = "fixed" if strategy == "fixed" else "fallback_fixed"
        return Thresholds([float(fixed)] * num_labels, [rule] * num_labels, support)
    pooled = _best_threshold(labels.ravel(), probs.ravel(), beta)
    if strategy == "global":
        return Thresholds([pooled] * num_labels, ["global"] * num_labels, support, pooled)
    values, rules = [], []
    for j, n in enumerate(support):
        if n < max(min_support, 1):
            rule = "global" if fallback == "prevalence" and n == 0 else fallback
            values.append({"prevalence": lambda: _prevalence_threshold(probs[:, j], n),
                           "global": lambda: pooled, "fixed": lambda: float(fixed)}[rule]())
            rules.append(f"fallback_{rule}")
        elif shrinkage > 0:
            own = _best_threshold(labels[:, j], probs[:, j], beta)
            values.append(float((n * own + shrinkage * pooled) / (n + shrinkage)))
            rules.append("shrunk")
        else:
            values.append(_best_threshold(labels[:, j], probs[:, j], beta))
            rules.append("tuned")
    return Thresholds(values, rules, support, pooled)


def _prevalence_threshold(p: np.ndarray, n: int) -> float:
    """Halfway between the n-th and (n+1)-th highest of `p` (n >= 1): `p >= t` calls n rows
    positive (more only where scores tie)."""
    top = np.sort(p)[::-1]
    return float((top[n - 1] + (top[n] if n < len(top) else 0.0)) / 2)


def _best_threshold(y: np.ndarray, p: np.ndarray, beta: float) -> float:
    """The F-beta-best cut for `p >= t` (y has a positive), halfway to the next lower score."""
    order = np.argsort(-p, kind="stable")
    scores, hits = p[order], y[order].astype(np.float64)
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last row of each score
    tp, fp, cut = np.cumsum(hits)[ends], np.cumsum(1 - hits)[ends], scores[ends]
    b2 = beta * beta
    f = (1 + b2) * tp / ((1 + b2) * tp + b2 * (hits.sum() - tp) + fp)
    k = int(np.argmax(f))
    lower = cut[k + 1] if k + 1 < len(cut) else 0.0
    return float((cut[k] + lower) / 2)


def report(labels: np.ndarray, probs: np.ndarray, thresholds: float | list[float] | np.ndarray,
           names: list[str] | tuple[str, ...], beta: float = 1.0,
           rules: dict | None = None) -> dict:
    """Everything an evaluation reports, at 0.5 and at `thresholds` side by side.

    `subset_accuracy` is the exact-match ratio (all labels of a row right); `hamming_loss` is
    the fraction of wrong label decisions. Per-element accuracy (1 - hamming_loss) is never
    called "accuracy". `rules`: how each threshold was chosen (Thresholds.meta(), as the
    export stores it); the labels that fell back are listed in `threshold_fallbacks`.
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
        {"label": name, "threshold": float(thresholds[j]),
         "threshold_rule": rules["threshold_rules"][j] if rules else None,
         "support": tuned["support"][j],
         "auc": tuned["auc"][j], "precision": tuned["precision"][j], "recall": tuned["recall"][j],
         "f1": tuned["f1"][j], "f1_at_0.5": at_half["f1"][j], "confusion": tuned["confusion"][j]}
        for j, name in enumerate(names)]
    out["threshold_fallbacks"] = [
        {"label": name, "rule": rule, "threshold": float(thresholds[j]),
         "validation_support": rules["threshold_support"][j]}
        for j, (name, rule) in enumerate(zip(names, rules["threshold_rules"]))
        if rule.startswith("fallback")] if rules else None
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
