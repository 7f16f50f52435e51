"""Plots and the run report: PNGs (matplotlib, Agg) plus one report.html that links them.

Owns presentation only: numbers come from metrics.py, inputs are arrays and metrics.json dicts.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter

import matplotlib

matplotlib.use("Agg")  # files only; never a display (workers and CI have none)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay  # noqa: E402

from mlc_dist import metrics  # noqa: E402

TABLE_COLUMNS = ["label", "support", "threshold", "threshold_rule", "precision", "recall", "f1",
                 "f1_at_0.5", "auc"]
#: What report pages and `evaluate` say about a threshold_rule (metrics.Thresholds).
RULES_NOTE = ("threshold_rule: tuned = the label's own best validation F; shrunk = its own, pulled "
              "towards the global threshold; fallback_* = too few validation positives "
              "(train.threshold_min_support): fallback_prevalence calls as many validation rows "
              "positive as the label has positives, fallback_global takes the micro-F threshold "
              "over all labels, fallback_fixed train.threshold; a threshold sits halfway between "
              "two validation scores.")
HEADLINE = ["num_rows", "mean_auc", "micro_f1", "micro_f1_tuned", "macro_f1", "macro_f1_tuned",
            "weighted_f1", "weighted_f1_tuned", "samples_f1", "samples_f1_tuned",
            "subset_accuracy", "subset_accuracy_tuned", "hamming_loss", "hamming_loss_tuned"]


def per_label_table(evaluation: dict) -> pd.DataFrame:
    """One row per label; undefined values stay empty (NaN), not 0."""
    return pd.DataFrame([{c: row.get(c) for c in TABLE_COLUMNS}
                         for row in evaluation["per_label"]], columns=TABLE_COLUMNS)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_markdown(frame: pd.DataFrame) -> str:
    # Written here: pandas' to_markdown needs the optional `tabulate` package.
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |"
              for row in frame.astype(object).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_text(evaluation: dict) -> str:
    """The per-label table and the headline figures, as printed by `evaluate`."""
    frame = per_label_table(evaluation)
    body = frame.astype(object).map(_fmt).to_string(index=False)
    head = "  ".join(f"{k}={_fmt(evaluation.get(k))}" for k in
                     ("mean_auc", "macro_f1", "macro_f1_tuned", "micro_f1", "micro_f1_tuned",
                      "subset_accuracy_tuned", "hamming_loss_tuned"))
    return (f"{body}\n\n{head}\n(subset_accuracy = exact match of all labels of a row; "
            f"hamming_loss = fraction of wrong label decisions; '_tuned' = at the stored "
            f"thresholds, else at 0.5)\n{RULES_NOTE}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def run_summary(summary: dict) -> str:
    """What a training run ends with on the terminal: how it went and where its outputs are."""
    figures = [f"{name} {summary[key]:.3f}" for key, name in (
        ("val_mean_auc", "mean AUC"), ("val_micro_f1_tuned", "micro F1 (tuned)"),
        ("val_macro_f1_tuned", "macro F1 (tuned)"), ("val_category_accuracy", "category accuracy"))
        if summary.get(key) is not None]
    run_dir = os.path.dirname(summary["model_dir"])
    stopped = " (early stopping)" if summary.get("stopped_early_at") is not None else ""
    selection = summary.get("selection")
    chosen = (f" (step {selection['step']}: best {selection['metric']} "
              f"{selection['value']:.4g})" if selection else "")
    lines = [f"trained {summary['steps']} steps{stopped} in {_duration(summary['wall_time_s'])} "
             f"({summary['train_samples_per_s']:.1f} samples/s)",
             f"validation{chosen}: {', '.join(figures) or 'no figures'}",
             f"model:   {summary['model_dir']}",
             f"metrics: {os.path.join(run_dir, 'metrics.json')}"]
    if summary.get("report"):
        lines.append(f"report:  {summary['report']}")
    return "\n".join(lines)


def _grid(n: int, cols: int = 6, size: float = 2.4):
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_label_distribution(counts: dict[str, list[float]], names, path: str) -> str:
    """Positives per label for each split (e.g. train vs validation), as horizontal bars."""
    y = np.arange(len(names))
    height = 0.8 / max(1, len(counts))
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(names)))
    for i, (split, values) in enumerate(counts.items()):
        ax.barh(y + i * height, values, height, label=split)
    ax.set_yticks(y + height * (len(counts) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("rows with the label (positives)")
    ax.set_title("Label distribution")
    ax.legend()
    return _save(fig, path)


def plot_history(history: list[dict], path: str) -> str:
    """Training loss and validation metrics against the optimizer step."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    loss = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if loss:
        left.plot(*zip(*loss), marker=".")
    left.set(xlabel="step", ylabel="training loss (BCE)", title="Loss")
    for key in ("val_mean_auc", "val_micro_f1", "val_macro_f1", "val_macro_f1_tuned"):
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set(xlabel="step", ylabel="score", title="Validation", ylim=(0, 1))
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_confusions(confusions: list, names, path: str) -> str:
    """Per-label 2x2 confusion matrices (rows: true 0/1, columns: predicted 0/1)."""
    fig, axes = _grid(len(names))
    for ax, name, cm in zip(axes, names, confusions):
        ConfusionMatrixDisplay(np.asarray(cm), display_labels=["0", "1"]).plot(
            ax=ax, colorbar=False, cmap="Blues", values_format="d")
        ax.set_title(name, fontsize=9)
    return _save(fig, path)


def plot_pr_curves(labels: np.ndarray, probs: np.ndarray, thresholds, names, path: str) -> str:
    """Precision-recall curve per label, with the stored threshold's operating point."""
    fig, axes = _grid(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        y = labels[:, j]
        if y.sum() == 0:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center")
            ax.set_title(name, fontsize=9)
            continue
        display = PrecisionRecallDisplay.from_predictions(y, probs[:, j], ax=ax)
        ax.axhline(y.mean(), color="grey", linestyle="--", linewidth=0.8)  # chance: prevalence
        pred = probs[:, j] >= thresholds[j]
        tp = float((pred & (y == 1)).sum())
        ax.plot(tp / y.sum(), tp / max(pred.sum(), 1), "ro")
        ax.set_title(f"{name}\nAP {display.average_precision:.2f}, o = t {thresholds[j]:.2f}",
                     fontsize=8)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        if ax.get_legend():
            ax.get_legend().remove()
    return _save(fig, path)


def label_sets(matrix: np.ndarray, names) -> list[str]:
    return ["+".join(names[j] for j in np.flatnonzero(row)) or "(none)" for row in matrix]


def plot_label_sets(labels: np.ndarray, preds: np.ndarray, names, path: str,
                    top: int = 10) -> str:
    """Multi-label as multi-class: the most frequent true label sets vs the predicted sets."""
    true_sets, pred_sets = label_sets(labels, names), label_sets(preds, names)
    classes = [s for s, _ in Counter(true_sets).most_common(top)]
    known = set(classes)
    bucket = lambda sets: [s if s in known else "(other)" for s in sets]  # noqa: E731
    fig, ax = plt.subplots(figsize=(2 + 0.7 * len(classes), 1.5 + 0.6 * len(classes)))
    ConfusionMatrixDisplay.from_predictions(
        bucket(true_sets), bucket(pred_sets), labels=classes + ["(other)"], ax=ax,
        colorbar=False, cmap="Blues")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_title(f"Label sets: the {len(classes)} most frequent true sets")
    return _save(fig, path)


def write_report(out_dir: str, title: str, evaluation: dict, labels: np.ndarray,
                 probs: np.ndarray, data_counts: dict[str, list[float]] | None = None,
                 history: list[dict] | None = None) -> str:
    """All plots plus report.html under out_dir; returns the HTML path."""
    os.makedirs(out_dir, exist_ok=True)
    names = [row["label"] for row in evaluation["per_label"]]
    thresholds = [row["threshold"] for row in evaluation["per_label"]]
    images = []
    counts = data_counts or {"evaluated": labels.sum(axis=0).tolist()}
    images.append(plot_label_distribution(counts, names, os.path.join(out_dir, "labels.png")))
    if history:
        images.append(plot_history(history, os.path.join(out_dir, "history.png")))
    images.append(plot_confusions([row["confusion"] for row in evaluation["per_label"]], names,
                                  os.path.join(out_dir, "confusion.png")))
    images.append(plot_pr_curves(labels, probs, thresholds, names,
                                 os.path.join(out_dir, "pr_curves.png")))
    images.append(plot_label_sets(labels, metrics.predict(probs, np.asarray(thresholds)), names,
                                  os.path.join(out_dir, "label_sets.png")))
    headline = "".join(f"<tr><th>{k}</th><td>{_fmt(evaluation.get(k))}</td></tr>"
                       for k in HEADLINE if k in evaluation)
    table = per_label_table(evaluation).astype(object).map(_fmt).to_html(index=False)
    figures = "".join(f'<h2>{os.path.splitext(os.path.basename(p))[0]}</h2>'
                      f'<a href="{os.path.basename(p)}"><img src="{os.path.basename(p)}" '
                      f'style="max-width:100%"></a>' for p in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>"
            "<p>subset_accuracy: exact match of every label of a row. hamming_loss: fraction of "
            "wrong label decisions. <i>_tuned</i>: at the per-label thresholds stored with the "
            "model; otherwise at 0.5. n/a: undefined (no positives in these rows). "
            f"{html.escape(RULES_NOTE)}</p>"
            f"<table border='1'>{headline}</table><h2>Per label</h2>{table}{figures}"
            "</body></html>")
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path
