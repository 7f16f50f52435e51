"""Single-process prediction for a handful of texts (the `predict` command); no Ray."""

from __future__ import annotations

import torch

from mlc_dist.artifacts import load_export


@torch.inference_mode()
def predict_texts(model_dir: str, texts: list[str], pair: str | None = None):
    """Per text: [(label, probability, above its threshold)], most probable first."""
    model, tokenizer, meta = load_export(model_dir)
    enc = tokenizer(texts, [pair] * len(texts) if pair else None, truncation=True,
                    max_length=meta.max_length, padding=True, return_tensors="pt")
    probs = torch.sigmoid(model(**enc).logits.float()).numpy()
    out = []
    for row in probs:
        ranked = sorted(zip(meta.label_space.names, row, meta.thresholds), key=lambda t: -t[1])
        out.append([(n, float(p), bool(p >= t)) for n, p, t in ranked])
    return out
