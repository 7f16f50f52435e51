"""Single-process prediction for a handful of texts (the `predict` command); no Ray."""

from __future__ import annotations

import torch

from mlc_dist.artifacts import load_export


@torch.inference_mode()
def predict_texts(model_dir: str, texts: list[str | dict], pair: str | None = None):
    """Per text: [(output, probability, chosen)], most probable first.

    A model that reads its text from several columns (data.text_columns/text_template) takes
    each text as {column: value}; the text is built as training built it (data/textspec.py).

    Binary labels: (label, P(label), P >= its threshold). Multi-category labels: one entry per
    category, (label=category, P(category), category is the argmax), so the probabilities of one
    label sum to 1 instead of being read as independent sigmoids.
    """
    model, tokenizer, meta = load_export(model_dir)
    texts = model_texts(meta, texts)
    enc = tokenizer(texts, [pair] * len(texts) if pair else None, truncation=True,
                    max_length=meta.max_length, padding=True, return_tensors="pt")
    probs = meta.outputs.probabilities(model(**enc).logits.float()).numpy()
    columns = meta.outputs.columns(probs, meta.thresholds)
    entries = []  # (display name, score column, predicate on pred_ value)
    for name in meta.label_space.names:
        cats = meta.label_space.categories.get(name)
        if cats and f"score_{name}" not in columns:
            entries += [(f"{name}={cat}", f"score_{name}_{cat}", f"pred_{name}", k)
                        for k, cat in enumerate(cats)]
        else:
            entries.append((name, f"score_{name}", f"pred_{name}", 1))
    out = []
    for i in range(len(texts)):
        row = [(shown, float(columns[score][i]), bool(columns[pred][i] == k))
               for shown, score, pred, k in entries]
        out.append(sorted(row, key=lambda t: -t[1]))
    return out


def model_texts(meta, texts: list[str | dict]) -> list[str]:
    """The model's input text of each item: a str as is; {column: value} through the model's
    text template. A model with a template needs the dicts, one without it the strings."""
    if meta.text_template:  # imports Ray Data's package, not for one text column
        from mlc_dist.data import textspec

        return textspec.compose_rows(meta.text_template, texts)
    if any(not isinstance(t, str) for t in texts):
        from mlc_dist.data import DataError

        raise DataError(f"this model reads one text column ({meta.text_column!r}): give each "
                         "text as a string")
    return list(texts)
