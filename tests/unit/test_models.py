"""Heads, pooling, per-head losses and the tabular model: CPU, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlc_dist import data
from mlc_dist.config import DataConfig, ModelConfig
from mlc_dist.demo import TABULAR_FEATURES, TABULAR_LABELS, generate_tabular
from mlc_dist.labels import LabelSpace
from mlc_dist.losses import build_loss, per_head_cross_entropy, prior_bias
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.models import build_model
from mlc_dist.models.heads import MultiBinaryHead, mean_pool

SEVERITY = LabelSpace(("a", "severity", "b"), {"severity": ("none", "mild", "severe")})


def test_batched_multi_binary_head_equals_a_loop_of_heads():
    torch.manual_seed(0)
    head = MultiBinaryHead(16, [1] * 5)
    loop = nn.ModuleList(nn.Linear(16, 1) for _ in range(5))
    with torch.no_grad():
        for j, lin in enumerate(loop):
            lin.weight.copy_(head.weight[j].T)
            lin.bias.copy_(head.bias[j:j + 1])
    x = torch.randn(8, 16)
    expected = torch.cat([lin(x) for lin in loop], dim=1)
    assert torch.allclose(head(x), expected, atol=1e-6)
    # Gradients reach every head's own weights only.
    head(x)[:, 2].sum().backward()
    assert head.weight.grad[2].abs().sum() > 0 and head.weight.grad[[0, 1, 3, 4]].abs().sum() == 0


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    hidden[0, 3:] = 1e6  # padding positions hold garbage
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_encoder_output_does_not_depend_on_padding():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="encoder", hidden_size=32, num_heads=2, num_layers=2),
                        LabelSpace.from_names("xyz"), vocab_size=60, pad_token_id=0,
                        max_length=32).eval()
    ids = torch.randint(1, 60, (1, 7))
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    mask = (padded_ids != 0).long()
    padded = model(input_ids=padded_ids, attention_mask=mask).logits
    assert torch.allclose(short, padded, atol=1e-5)
    left_ids = torch.cat([torch.zeros(1, 9, dtype=torch.long), ids], dim=1)  # positions too
    left = model(input_ids=left_ids, attention_mask=(left_ids != 0).long()).logits
    assert torch.allclose(short, left, atol=1e-5)


def test_multi_category_loss_is_the_mean_of_per_head_cross_entropies():
    logits = torch.tensor([[0.2, -1.0, 0.5, 1.0, 2.0, -0.3, 0.7],
                           [1.5, 0.1, -0.2, 0.0, 0.3, 0.9, -1.1]])
    labels = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    sizes = [2, 3, 2]  # a (binary), severity (3), b (binary)

    def ce(row, target):  # -log softmax(row)[target], by hand
        return -(row[target] - torch.log(torch.exp(row).sum()))

    hand = []
    for j, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 7)]):
        hand.append(np.mean([float(ce(logits[i, lo:hi], int(labels[i, j]))) for i in range(2)]))
    expected = float(np.mean(hand))
    assert float(per_head_cross_entropy(logits, labels, sizes)) == pytest.approx(expected, 1e-6)
    outputs = OutputSchema(SEVERITY, "multi_category")
    assert outputs.num_outputs == 7
    assert float(build_loss(outputs)(logits, labels)) == pytest.approx(expected, 1e-6)
    probs = outputs.probabilities(logits).numpy()
    assert np.allclose(probs[:, 2:5].sum(1), 1.0)
    cols = outputs.columns(probs, [0.5, 0.5, 0.5])
    assert sorted(cols) == ["pred_a", "pred_b", "pred_severity", "score_a", "score_b",
                            "score_severity_mild", "score_severity_none",
                            "score_severity_severe"]
    assert cols["pred_severity"].tolist() == [2, 2]  # argmax of [0.5, 1.0, 2.0] and [-0.2, 0, 0.3]
    assert np.allclose(cols["score_a"], F.softmax(logits[:, :2], 1)[:, 1].numpy())


def test_category_labels_are_read_as_indices_or_names():
    cfg = DataConfig(label_columns=["a", "severity", "b"], id_columns=["id"],
                     label_categories={"severity": ["none", "mild", "severe"]})
    space = data.label_space_for(cfg)
    batch = pa.table({"id": ["1", "2", "3"], "a": [0, 1, 0], "b": [1, 1, 0],
                      "severity": ["none", "severe", "1"], "path": ["f.csv"] * 3})
    assert data.wide_labels(batch, space, cfg).tolist() == [[0, 0, 1], [1, 2, 1], [0, 1, 0]]
    bad = batch.set_column(3, "severity", pa.array(["none", "extreme", "mild"]))
    with pytest.raises(data.DataError, match=r"f.csv: row with id='2'.*'severity'.*'extreme'"):
        data.wide_labels(bad, space, cfg)
    with pytest.raises(data.DataError, match="label_categories"):
        data.label_space_for(cfg.model_copy(update={"label_categories": {"nope": ["x", "y"]}}))


def test_tabular_rows_become_feature_vectors():
    cfg = DataConfig(feature_columns=list(TABULAR_FEATURES), label_columns=list(TABULAR_LABELS),
                     id_columns=["id"])
    table = generate_tabular(10).append_column("path", pa.array(["t.parquet"] * 10))
    out = data.Normalize(cfg, data.label_space_for(cfg))(table)
    feats = np.stack(out.column(data.FEATURES).to_numpy(zero_copy_only=False))
    assert feats.shape == (10, 12) and np.allclose(feats[:, 3], table.column("f3").to_numpy())
    padded = data.pad_batch({data.FEATURES: feats}, 0)
    assert list(padded) == [data.FEATURES] and padded[data.FEATURES].dtype == np.float32
    nulls = table.set_column(1, "f0", pa.array([None] + [1.0] * 9, pa.float32()))
    with pytest.raises(data.DataError, match="id='t0000000000'.*null or NaN"):
        data.Normalize(cfg, data.label_space_for(cfg))(nulls)


@pytest.fixture
def one_thread():
    # Tiny matmuls: extra threads only contend with each other on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("head", ["multi_binary", "multi_category"])
def test_tabular_model_learns_the_generated_data(head, one_thread):
    torch.manual_seed(0)
    table = generate_tabular(1000, seed=0)
    x = torch.tensor(np.stack([table.column(f).to_numpy() for f in TABULAR_FEATURES], 1))
    y = torch.tensor(np.stack([table.column(n).to_numpy() for n in TABULAR_LABELS], 1),
                     dtype=torch.float32)
    space = LabelSpace.from_names(TABULAR_LABELS)
    model = build_model(ModelConfig(kind="mlp", head=head, hidden_size=64, num_layers=2),
                        space, num_features=12)
    loss_fn = build_loss(OutputSchema(space, head))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for epoch in range(15):
        for i in range(0, 1000, 50):
            loss = loss_fn(model(features=x[i:i + 50]).logits, y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    # Starts near ln 2 = 0.69 (chance); the labels follow from the features.
    assert np.mean(losses[:5]) > 0.6 and np.mean(losses[-20:]) < 0.45, losses[::20]


@pytest.mark.parametrize("pos_weight", [None, [3.0, 1.0, 0.5]])
def test_prior_bias_minimizes_the_loss_of_a_constant_prediction(pos_weight):
    labels = torch.zeros(200, 3)
    labels[:10, 0], labels[:100, 1] = 1, 1  # label 2 is never positive
    space = LabelSpace.from_names("xyz")
    outputs = OutputSchema(space, "linear")
    bias = prior_bias(outputs, labels.sum(0).tolist(), 200, pos_weight)
    logits = torch.tensor(bias).repeat(200, 1).requires_grad_()
    build_loss(outputs, pos_weight)(logits, labels).backward()
    # The constant logits that minimize the loss: zero gradient, except where p was clipped.
    assert logits.grad.sum(0)[:2].abs().max() < 1e-6
    expected = np.log(0.05 / 0.95) + (np.log(3.0) if pos_weight else 0.0)
    assert bias[0] == pytest.approx(expected) and bias[2] < -5
    assert prior_bias(OutputSchema(SEVERITY, "multi_category"), [1, 1, 1], 10) is None


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    from tests.families import FAMILIES, build_family

    return {f: build_family(f, tmp_path_factory.mktemp(f)) for f in FAMILIES}


@pytest.mark.parametrize("model_cfg", [
    {"family": "bert"}, {"family": "distilbert"}, {"family": "roberta"}, {"family": "xlnet"},
    {"family": "deberta-v2"}, {"family": "bert", "head": "multi_binary", "pooling": "mean"},
    {"kind": "encoder", "hidden_size": 32, "num_heads": 2, "num_layers": 1},
    {"kind": "mlp", "head": "multi_binary", "hidden_size": 16}])
def test_output_bias_is_the_bias_of_the_logits(model_cfg, family_models):
    from mlc_dist.models import output_bias

    cfg = dict(model_cfg)
    family = cfg.pop("family", None)
    if family:
        cfg["name"] = family_models[family]
    torch.manual_seed(0)
    model = build_model(ModelConfig(**cfg), LabelSpace.from_names("abcd"), vocab_size=60,
                        max_length=16, num_features=5).eval()
    inputs = ({"features": torch.randn(3, 5)} if cfg.get("kind") == "mlp" else
              {"input_ids": torch.randint(5, 60, (3, 8)), "attention_mask": torch.ones(3, 8,
                                                                                       dtype=torch.long)})
    before = model(**inputs).logits
    shift = torch.tensor([1.0, -2.0, 3.0, 0.5])
    with torch.no_grad():
        output_bias(model).add_(shift)
    # Moving that bias moves every row's logits by exactly that much: it is the output layer's.
    assert torch.allclose(model(**inputs).logits - before, shift.expand(3, 4), atol=1e-5)
