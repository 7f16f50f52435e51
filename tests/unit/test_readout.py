"""models.readout: the last layer computed at [CLS] only gives the whole model's logits, runs
its projections on one position (no key or value projection), is used only for heads that read
[CLS], and the ONNX export takes it or falls back to the whole model. CPU, tiny random-init
models, no Ray."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mlc_dist import data
from mlc_dist.artifacts import load_export
from mlc_dist.models import readout
from mlc_dist.scoring import onnx_backend
from .onnx_models import (batch_for, export_kind, onnx_cache,  # noqa: F401 - fixtures
                          scores, tiny_bert)


def _family(family, tmp_path):
    from ..families import build_family

    return build_family(family, tmp_path / "base", initializer_range=0.2)


def _padded(model_dir: str):
    """Model inputs of rows of different lengths, padded on the tokenizer's side."""
    _, tokenizer, _ = load_export(model_dir)
    batch = batch_for(model_dir)
    padded = data.pad_batch({"input_ids": batch["input_ids"]}, *data.padding_of(tokenizer))
    assert (padded["attention_mask"] == 0).any()  # some rows are padded
    return {k: torch.from_numpy(v) for k, v in padded.items()}


def _linear_positions(model) -> tuple[dict[tuple[int, str], int], list]:
    """({(encoder layer, Linear's name in it): positions it ran on}, filled per forward; the
    hooks). A wrapped layer's Linears are named as in the layer it wraps."""
    seen = {}

    def hook(key):
        return lambda _m, args, _out: seen.__setitem__(key, args[0].shape[1])

    hooks = []
    for name, m in model.named_modules():
        found = re.search(r"\.layer\.(\d+)\.(?:layer\.)?(.+)$", name)
        if isinstance(m, torch.nn.Linear) and found:
            hooks.append(m.register_forward_hook(hook((int(found[1]), found[2]))))
    return seen, hooks


@pytest.mark.parametrize("family,head", [("bert", "linear"), ("bert", "multi_binary"),
                                         ("roberta", "linear")])
def test_last_layer_at_cls_gives_the_whole_models_logits(family, head, tiny_bert, tmp_path):
    base = tiny_bert if family == "bert" else _family(family, tmp_path)
    exp = export_kind(tmp_path / "export", base, "hf", head, "cls")
    model, tokenizer, _ = load_export(exp)
    fast = readout.first_token_model(model.eval(), tokenizer.padding_side)
    assert fast is not None
    inputs = _padded(exp)
    seen, hooks = _linear_positions(fast)
    with torch.inference_mode():
        want, got = model(**inputs).logits, fast(**inputs).logits
    for h in hooks:
        h.remove()
    width = inputs["input_ids"].shape[1]
    last = max(layer for layer, _ in seen)
    # Every layer but the last: every projection on every position. The last: [CLS] only,
    # and no key or value projection at all (folded into the query and the mixed states).
    assert width > 1 and all(k == width for (layer, _), k in seen.items() if layer != last)
    assert {name: k for (layer, name), k in seen.items() if layer == last} == {
        "attention.self.query": 1, "attention.output.dense": 1, "intermediate.dense": 1,
        "output.dense": 1}
    assert want.std() > 0.5  # logits that differ between rows
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # rounding: other shapes
    assert not isinstance(model.base_model.encoder.layer[-1] if head == "linear"
                          else model.encoder.encoder.layer[-1], readout.FirstTokenLayer)


@pytest.mark.parametrize("case", ["mean pooling", "cls pooling padded left", "xlnet",
                                  "distilbert"])
def test_heads_reading_more_than_cls_or_other_layers_keep_the_whole_model(case, tiny_bert,
                                                                          tmp_path):
    if case in ("xlnet", "distilbert"):
        exp = export_kind(tmp_path / "export", _family(case, tmp_path), "hf", "linear", "cls")
    else:
        exp = export_kind(tmp_path / "export", tiny_bert, "hf", "multi_binary",
                          "mean" if case == "mean pooling" else "cls")
    model, tokenizer, _ = load_export(exp)
    side = "left" if case == "cls pooling padded left" else tokenizer.padding_side
    assert readout.first_token_model(model, side) is None


def test_onnx_export_takes_the_cls_graph_and_falls_back_when_it_does_not_hold(
        tiny_bert, tmp_path, monkeypatch):
    exp = export_kind(tmp_path / "export", tiny_bert, "hf", "linear", "cls")
    model, tokenizer, meta = load_export(exp)
    inputs = onnx_backend.sample_inputs(meta, tokenizer, rows=3)
    check = onnx_backend.sample_inputs(meta, tokenizer, rows=5)
    reference = onnx_backend._Logits(model, list(inputs)).eval()
    with torch.inference_mode():
        want = reference(*(torch.from_numpy(v) for v in check.values())).numpy()
    path = str(tmp_path / "fast.onnx")
    assert onnx_backend._export_first_token(model, tokenizer, reference, inputs, check, path,
                                            exp)
    np.testing.assert_allclose(onnx_backend.OnnxModel(path, 1)(check), want, atol=1e-5, rtol=0)

    # A first-token model that computes something else is caught by the graph check: the
    # export falls back to the whole model, whose graph scores as torch does.
    right = readout.first_token_model

    def wrong(model, padding_side):
        fast = right(model, padding_side)
        with torch.no_grad():
            fast.classifier.bias.add_(1.0)
        return fast

    monkeypatch.setattr(readout, "first_token_model", wrong)
    assert not onnx_backend._export_first_token(model, tokenizer, reference, inputs, check,
                                                str(tmp_path / "wrong.onnx"), exp)
    onnx_backend.export_onnx(exp, str(tmp_path / "whole.onnx"))
    np.testing.assert_allclose(onnx_backend.OnnxModel(str(tmp_path / "whole.onnx"), 1)(check),
                               want, atol=1e-5, rtol=0)


def test_the_cls_graph_quantizes_and_its_int8_scores_stay_close(tiny_bert, tmp_path):
    """The folded last layer's weight products quantize like any MatMul (onnx-int8)."""
    from mlc_dist.scoring import Scorer

    exp = export_kind(tmp_path / "export", tiny_bert, "hf", "linear", "cls")
    batch = batch_for(exp)

    ref = scores(Scorer(exp, ["id"])(batch))
    assert ref.std() > 0.15
    np.testing.assert_allclose(scores(Scorer(exp, ["id"], backend="onnx")(batch)), ref,
                               atol=1e-5, rtol=0)
    diff = np.abs(scores(Scorer(exp, ["id"], backend="onnx-int8")(batch)) - ref)
    assert 0 < diff.max() <= 0.1  # quantized (not fp32 again), and close
