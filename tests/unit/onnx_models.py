"""Tiny exports of every model kind and head for the ONNX backend tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc_dist.labels import LabelSpace

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
SEVERITY = LabelSpace(("severity", "spam"), {"severity": ("none", "mild", "severe")})
FEATURES = [f"f{i}" for i in range(5)]


# Fixtures for the modules that export graphs; each module imports them by name.
@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    """Each importing module's own graph cache (MLC_DIST_CACHE), for all its tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLC_DIST_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny BERT with wider initial weights than the session's: its CLS state varies with the
    text, so scores spread (the shared one's CLS is near-constant)."""
    from ..conftest import build_tiny_bert

    torch.manual_seed(0)
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), initializer_range=0.2)


def scores(out: dict) -> np.ndarray:
    """A Scorer output's score_ columns, [rows, outputs]."""
    return np.stack([v for k, v in out.items() if k.startswith("score_")], axis=1)


TEXTS = ["you are an idiot", "thanks for the references, very helpful",
         "I will find you", "ok", "what a clown, get lost and never come back here again",
         "the article cites three sources", "stop it", "this is the worst edit ever made",
         "great work on the history section", "nobody cares about your opinion",
         "see the talk page", "you should be banned"]


def spread_out(model: torch.nn.Module, inputs: dict) -> None:
    """Rescale the output layer so each output's logits over `inputs` have mean 0 and std 2:
    scores over most of (0, 1) rather than near one value, whatever the random encoder gives."""
    from mlc_dist.models import output_bias

    bias = output_bias(model)
    weight = next(p for m in model.modules() for n, p in m.named_parameters(recurse=False)
                  if n == "weight" and any(b is bias for b in m.parameters(recurse=False)))
    with torch.no_grad():
        logits = model(**inputs).logits  # [B, num_outputs]
        # Capped: a near-constant output (a random BERT's CLS) would need an ill-conditioned head.
        scale = (2.0 / logits.std(0).clamp(min=1e-6)).clamp(max=100.0)
        weight.mul_(scale.view(-1, *[1] * (weight.dim() - 1)))
        bias.copy_(scale * (bias - logits.mean(0)))


def export_kind(directory, tiny_bert: str, kind: str = "hf", head: str = "linear",
                pooling: str = "cls", labels: LabelSpace = LABELS) -> str:
    """An export as training would write it (random weights), of `kind` with `head`."""
    from transformers import AutoTokenizer

    from mlc_dist.artifacts import ModelMeta, save_export
    from mlc_dist.config import ModelConfig
    from mlc_dist.models import build_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert) if kind != "mlp" else None
    cfg = ModelConfig(kind=kind, name=tiny_bert, head=head, pooling=pooling, hidden_size=16,
                      num_heads=2, num_layers=1)
    model = build_model(cfg, labels, vocab_size=tokenizer.vocab_size if tokenizer else 0,
                        pad_token_id=0, max_length=64, num_features=len(FEATURES)).eval()
    if kind == "mlp":  # running statistics of a trained BatchNorm, not the identity
        model.body[0].running_mean.normal_()
        model.body[0].running_var.uniform_(0.5, 2.0)
    if kind == "mlp":
        inputs = {"features": torch.from_numpy(np.random.default_rng(1).normal(
            size=(24, len(FEATURES))).astype(np.float32))}
    else:
        inputs = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    spread_out(model, inputs)
    meta = ModelMeta(labels, [0.5] * len(labels), "text", None, 64, tiny_bert, kind=kind,
                     head=head, feature_columns=FEATURES if kind == "mlp" else None)
    save_export(str(directory), model, tokenizer, meta)
    return str(directory)


def batch_for(model_dir: str, rows: int = 24) -> dict[str, np.ndarray]:
    """A Scorer input batch: token ids (ragged) or features, ids r0.."""
    from mlc_dist import data
    from mlc_dist.artifacts import read_meta

    meta = read_meta(model_dir)
    ids = np.array([f"r{i}" for i in range(rows)])
    if meta.kind == "mlp":
        rng = np.random.default_rng(1)
        return {"id": ids, data.FEATURES: rng.normal(size=(rows, len(FEATURES))).astype(
            np.float32)}
    texts = np.array([TEXTS[i % len(TEXTS)] * (1 + i // len(TEXTS)) for i in range(rows)])
    return data.Tokenize(model_dir, 64, keep=["id"])({"text": texts, "id": ids})
