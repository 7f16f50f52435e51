"""Every model kind x head through the same jobs: 2 DDP workers, export, score a Parquet file.

Tiny models (hidden 32, 1 layer), ~100 rows and 3 steps each: this checks the plumbing (inputs
each family accepts, heads, losses, export/load via the Auto* classes, score columns), not
learning; tests/unit/test_models.py checks the numbers.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlc_dist import data, scoring, train
from mlc_dist.data import Tokenize
from mlc_dist.artifacts import load_export
from mlc_dist.config import validate_job
from mlc_dist.labels import LabelSpace
from mlc_dist.losses import prior_bias
from mlc_dist.models import output_bias
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.scoring import Scorer
from mlc_dist.demo import JIGSAW_LABELS, SEVERITY, TABULAR_FEATURES, TABULAR_LABELS, \
    write_demo_kind

from ..families import build_family

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 300}
SEVERITY_LABELS = [*JIGSAW_LABELS[2:], "severity"]

CASES = {
    # family checkpoints with the family's own classifier (head: linear, pooling: cls)
    "distilbert-linear": ("distilbert", {}, "text"),
    "roberta-linear": ("roberta", {}, "text"),
    "deberta-v2-linear": ("deberta-v2", {}, "text"),
    "xlnet-linear": ("xlnet", {}, "text"),  # DDP finds its unused parameters (mask_emb)
    # our heads on an HF encoder
    "bert-multi_binary-mean": ("bert", {"head": "multi_binary", "pooling": "mean"}, "text"),
    "bert-multi_category": ("bert", {"head": "multi_category"}, "severity"),
    # from scratch
    "encoder-multi_category": (None, {"kind": "encoder", "head": "multi_category", **SMALL},
                               "severity"),
    # tabular
    "mlp-multi_binary": (None, {"kind": "mlp", "head": "multi_binary", "hidden_size": 32},
                         "tabular"),
    "mlp-multi_category": (None, {"kind": "mlp", "head": "multi_category", "hidden_size": 32},
                           "tabular"),
}

# Two workers only where DDP itself is what the case tests: XLNet's unused parameters, and the
# MLP's BatchNorm buffers (broadcast from rank 0). The others prove nothing more on two (the
# DDP pipeline and its kill drill are test_pipeline's), so they train on one.
TWO_WORKERS = {"xlnet-linear", "mlp-multi_binary"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arch_data")
    return {kind: write_demo_kind(str(tmp / kind), kind, rows=100, seed=3)
            for kind in ("text", "severity", "tabular")}


def _data_section(kind: str, paths: dict) -> dict:
    section = {"train": paths["train"], "id_columns": ["id"], "max_length": 32}
    if kind == "text":
        return {**section, "text_column": "comment_text", "label_columns": list(JIGSAW_LABELS)}
    if kind == "severity":
        return {**section, "text_column": "comment_text", "label_columns": SEVERITY_LABELS,
                "label_categories": {"severity": list(SEVERITY)}}
    return {**section, "feature_columns": list(TABULAR_FEATURES),
            "label_columns": list(TABULAR_LABELS)}


@pytest.mark.parametrize("case", list(CASES))
def test_trains_exports_and_scores(case, datasets, tmp_path, ray_cluster):
    family, model, kind = CASES[case]
    if family:
        model = {**model, "name": build_family(family, tmp_path / family)}
    job = validate_job({
        "run": {"name": case, "output_dir": str(tmp_path / "runs")},
        "data": _data_section(kind, datasets[kind]),
        "model": model,
        "train": {"max_steps": 3, "batch_size_per_worker": 8, "lr": 1e-3, "log_every_steps": 1,
                  "warmup_ratio": 0.0, "shuffle_buffer_rows": 0},
        "scaling": {"num_workers": 2 if case in TWO_WORKERS else 1},
        "score": {"input": datasets[kind]["score"], "output": str(tmp_path / "scores")},
    })
    summary = train.fit(job)
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert summary["steps"] == 3 and len(losses) == 3 and np.all(np.isfinite(losses))
    head = model.get("head", "linear")
    stats = summary["data"]["train"]
    prior = prior_bias(OutputSchema(LabelSpace.from_names(summary["data"]["labels"]), head),
                       stats["positives"], stats["num_rows"])
    if prior is None:  # softmax heads start uniform: the mean over heads of ln K
        start = (4 * np.log(2) + np.log(3)) / 5 if kind == "severity" else np.log(2)
    else:  # binary heads start at the labels' log-odds: the prior's mean entropy
        p = 1 / (1 + np.exp(-np.asarray(prior)))
        start = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    assert abs(losses[0] - start) < 0.15, (losses, start)
    if summary["validation"] is not None:  # binary heads: recomputed from the saved predictions
        assert summary["val_mean_auc"] == pytest.approx(summary["validation"]["mean_auc"])
    else:  # softmax heads leave no validation predictions for the report
        assert "val_category_accuracy" in summary or "val_mean_auc" in summary, summary

    loaded, tokenizer, meta = load_export(job.model_dir)
    assert (tokenizer is None) == (kind == "tabular")
    assert meta.head == head
    if prior is not None:  # set on every worker before step 1; 3 Adam steps of 1e-3 barely move it
        np.testing.assert_allclose(output_bias(loaded).detach().numpy(), prior, atol=0.05)

    result = scoring.run(job)
    table = pq.read_table(job.score.output)
    source = pq.read_table(job.score.input)
    assert result["rows"] == table.num_rows == source.num_rows
    assert sorted(table.column("id").to_pylist()) == sorted(source.column("id").to_pylist())
    names = meta.label_space.names
    if kind == "severity":
        probs = np.stack([table.column(f"score_severity_{c}").to_numpy() for c in SEVERITY], 1)
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
        assert set(table.column("pred_severity").to_pylist()) <= {0, 1, 2}
        assert np.array_equal(table.column("pred_severity").to_numpy(), probs.argmax(1))
        names = [n for n in names if n != "severity"]
    for name in names:
        assert table.schema.field(f"pred_{name}").type == "int8"
    # Each id's scores are the export's own for that id's row, scored in this process.
    scorer = Scorer(job.model_dir, ["id"])
    inputs = {data.FEATURES: np.stack([source.column(f).to_numpy() for f in TABULAR_FEATURES],
                                      1).astype(np.float32)} if kind == "tabular" else \
        Tokenize(job.model_dir, 32, keep=[])({data.TEXT: source.column("comment_text").to_numpy(
            zero_copy_only=False)})
    expected = scorer({**inputs, "id": source.column("id").to_numpy(zero_copy_only=False)})
    order = {i: j for j, i in enumerate(expected["id"])}
    rows = [order[i] for i in table.column("id").to_pylist()]
    for column in scorer.outputs.score_columns():
        np.testing.assert_allclose(table.column(column).to_numpy(), expected[column][rows],
                                   atol=1e-5, rtol=0, err_msg=column)
