"""Every family x head x kind scores a row the same whatever batch it is in, and model.dropout
reaches every model: CPU, no Ray, tiny random-init models (tests/families.py) and the packaged
MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlc_dist import data
from mlc_dist.artifacts import ModelMeta, save_export
from mlc_dist.config import DEFAULT_MODEL, ModelConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model, resolve_model_path
from mlc_dist.scoring import Scorer
from mlc_dist.train.worker import Collate

from ..families import FAMILIES, build_family, spread_outputs

BINARY = LabelSpace.from_names(["a", "b", "c"])
SEVERITY = LabelSpace(("a", "severity", "b"), {"severity": ("none", "mild", "severe")})
ROW = "you are an idiot and a clown, thanks for the references on this page"
SHORTER = ["thanks", "you idiot", "good point"]
LONGER = [f"{ROW} and the talk page, please stop the vandalism or you will be blocked"] * 2 + [
    "the references on this page are wrong and you are a clown, please read the policy first"]
NUM_FEATURES = 12
# head name -> ModelConfig keys; linear + cls is the family's own classifier, the others ours
HF_HEADS = {"linear": {}, "multi_binary": {"head": "multi_binary"},
            "multi_category-mean": {"head": "multi_category", "pooling": "mean"}}
OWN_HEADS = {"linear": {}, "multi_binary": {"head": "multi_binary"},
             "multi_category": {"head": "multi_category"}}
CASES = ([("hf", f, h) for f in (*FAMILIES, "minilm") for h in HF_HEADS]
         + [(k, None, h) for k in ("encoder", "mlp") for h in OWN_HEADS])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> checkpoint folder, built on first use."""
    built = {"minilm": resolve_model_path(DEFAULT_MODEL)}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build_family(family, tmp_path_factory.mktemp(family), initializer_range=0.2)
        return built[family]
    return get


def _build(kind: str, family: str | None, head: str, checkpoints, space: LabelSpace):
    """(model, tokenizer or None, base model name)."""
    from transformers import AutoTokenizer

    keys = (HF_HEADS if kind == "hf" else OWN_HEADS)[head]
    torch.manual_seed(0)
    if kind == "hf":
        path = checkpoints(family)
        return (build_model(ModelConfig(name=path, **keys), space),
                AutoTokenizer.from_pretrained(path), path)
    if kind == "encoder":
        tokenizer = AutoTokenizer.from_pretrained(checkpoints("bert"))
        cfg = ModelConfig(kind="encoder", hidden_size=32, num_layers=2, num_heads=2, **keys)
        return (build_model(cfg, space, vocab_size=len(tokenizer),
                            pad_token_id=tokenizer.pad_token_id, max_length=64), tokenizer, "")
    cfg = ModelConfig(kind="mlp", hidden_size=32, **keys)
    return build_model(cfg, space, num_features=NUM_FEATURES), None, ""


def _inputs(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """Model inputs for `texts` as the pipelines see them: ragged token rows, or features."""
    if tokenizer is None:  # the MLP: a fixed feature row per text
        seeds = [sum(map(ord, t)) for t in texts]
        return {data.FEATURES: np.stack([np.random.default_rng(s).normal(size=NUM_FEATURES)
                                         for s in seeds]).astype(np.float32)}
    enc = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    out = np.empty(len(enc), dtype=object)
    out[:] = [np.asarray(r, dtype=np.int32) for r in enc]
    return {"input_ids": out}


@pytest.mark.parametrize("kind,family,head", CASES,
                         ids=[f"{k}-{f or k}-{h}" for k, f, h in CASES])
def test_batch_invariance(kind, family, head, checkpoints, tmp_path):
    """A row's scores are the same (1e-5) alone, among longer rows and among shorter rows, in
    scoring (Scorer) and in training/validation batches (Collate), on spread-out scores."""
    space = SEVERITY if head.startswith("multi_category") else BINARY
    model, tokenizer, base = _build(kind, family, head, checkpoints, space)
    texts = [ROW, *SHORTER, *LONGER]
    collate = Collate(*data.padding_of(tokenizer))
    batch = {**_inputs(tokenizer, texts), data.LABELS: np.zeros((len(texts), len(space)))}
    spread_outputs(model, {k: v for k, v in collate(batch).items() if k != "labels"})
    meta = ModelMeta(space, [0.5] * len(space), "text", None, 64, base, kind=kind,
                     head=head.split("-")[0], feature_columns=[f"f{i}" for i in range(
                         NUM_FEATURES)] if kind == "mlp" else None)
    save_export(str(tmp_path), model, tokenizer, meta)
    scorer = Scorer(str(tmp_path), [], batch_size=64)
    columns = scorer.outputs.score_columns()

    def score(rows: list[str]) -> np.ndarray:  # [len(rows), num scores], Scorer's column order
        out = scorer(_inputs(tokenizer, rows))
        return np.stack([out[c] for c in columns], 1)

    def collated(rows: list[str]) -> np.ndarray:  # the training path: Collate, then the model
        tensors = collate({**_inputs(tokenizer, rows),
                           data.LABELS: np.zeros((len(rows), len(space)))})
        with torch.no_grad():
            logits = scorer.model(**{k: v for k, v in tensors.items() if k != "labels"}).logits
        out = scorer.outputs.columns(scorer.outputs.probabilities(logits).numpy(), meta.thresholds)
        return np.stack([out[c] for c in columns], 1)

    everything = score(texts)
    assert everything.min() < 0.2 and everything.max() > 0.8, everything  # spread out
    alone = score([ROW])[0]
    for others in (LONGER, SHORTER):
        np.testing.assert_allclose(score([*others, ROW])[-1], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(collated([ROW, *others])[0], collated([ROW])[0], atol=1e-5,
                                   rtol=0)
    np.testing.assert_allclose(collated([ROW])[0], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [*FAMILIES, "minilm"])
def test_cls_pooling_reads_the_classification_token(family, checkpoints):
    """Our heads with pooling: cls read the family's classification token (XLNet's <cls> ends
    the sequence), on the tokenizer's padding side."""
    from transformers import AutoTokenizer

    path = checkpoints(family)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = build_model(ModelConfig(name=path, head="multi_binary"), BINARY).eval()
    batch = Collate(*data.padding_of(tokenizer))(
        {**_inputs(tokenizer, [ROW, *SHORTER]), data.LABELS: np.zeros((4, 3))})
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    rows, cols = (inputs["input_ids"] == tokenizer.cls_token_id).nonzero(as_tuple=True)
    assert rows.tolist() == [0, 1, 2, 3]  # one classification token per row
    with torch.no_grad():
        hidden = model.encoder(**inputs).last_hidden_state  # [B, T, H]
        torch.testing.assert_close(model(**inputs).logits, model.head(hidden[rows, cols]))


DROPOUT_CASES = ([("hf", f, h) for f in (*FAMILIES, "minilm") for h in ("linear", "multi_binary")]
                 + [("encoder", None, "linear"), ("mlp", None, "linear")])


@pytest.mark.parametrize("kind,family,head", DROPOUT_CASES,
                         ids=[f"{k}-{f or k}-{h}" for k, f, h in DROPOUT_CASES])
def test_model_dropout_reaches_every_model(kind, family, head, checkpoints):
    """model.dropout=0: two forwards in train() mode agree exactly (a run is deterministic);
    model.dropout=0.3: they differ, so the value reaches the model."""
    from transformers import AutoTokenizer

    sizes = {} if kind == "hf" else {"hidden_size": 32, "num_layers": 2, "num_heads": 2}
    name = {"name": checkpoints(family)} if kind == "hf" else {}
    tokenizer = AutoTokenizer.from_pretrained(checkpoints(family or "bert")) \
        if kind != "mlp" else None
    batch = {**_inputs(tokenizer, [ROW, *SHORTER, *LONGER]), data.LABELS: np.zeros((7, 3))}
    inputs = {k: v for k, v in Collate(*data.padding_of(tokenizer))(batch).items()
              if k != "labels"}
    for dropout in (0.0, 0.3):
        torch.manual_seed(0)
        cfg = ModelConfig(kind=kind, head=head, dropout=dropout, **name, **sizes)
        model = build_model(cfg, BINARY, vocab_size=tokenizer and len(tokenizer),
                            pad_token_id=tokenizer and tokenizer.pad_token_id, max_length=64,
                            num_features=NUM_FEATURES).train()
        with torch.no_grad():
            first, second = model(**inputs).logits, model(**inputs).logits
        assert torch.equal(first, second) == (dropout == 0.0), (dropout, first - second)
