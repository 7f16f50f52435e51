"""`predict` on exported tiny models: the head decides how logits become probabilities."""

import numpy as np
import pytest
import torch

from mlc_dist.artifacts import load_export

from mlc_dist.labels import LabelSpace
from mlc_dist.predict import predict_texts
from ..conftest import export_tiny_model

SEVERITY = LabelSpace(("toxic", "severity"), {"severity": ("none", "mild", "severe")})


def test_multi_category_labels_get_a_softmax_and_one_chosen_category(tiny_bert, tmp_path):
    model_dir = export_tiny_model(tmp_path / "m", tiny_bert, SEVERITY, head="multi_category")
    for row in predict_texts(model_dir, ["you are awful", "what a nice day"]):
        probs = dict((name, p) for name, p, _ in row)
        assert set(probs) == {"toxic", "severity=none", "severity=mild", "severity=severe"}
        severity = {n: p for n, p in probs.items() if n.startswith("severity=")}
        np.testing.assert_allclose(sum(severity.values()), 1.0, atol=1e-5)
        chosen = [n for n, _, on in row if on and n.startswith("severity=")]
        assert chosen == [max(severity, key=severity.get)]
        assert [p for _, p, _ in row] == sorted((p for _, p, _ in row), reverse=True)


def test_binary_labels_are_flagged_by_their_threshold(tiny_bert, tmp_path):
    labels = LabelSpace.from_names(["toxic", "insult", "threat"])
    model_dir = export_tiny_model(tmp_path / "m", tiny_bert, labels)
    (row,) = predict_texts(model_dir, ["you are awful"])
    assert {n for n, _, _ in row} == set(labels.names)
    assert all(on == (p >= 0.5) for _, p, on in row)
    # The probabilities are the exported model's sigmoids for this text.
    model, tokenizer, _ = load_export(model_dir)
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(["you are awful"], return_tensors="pt")).logits)
    assert dict((n, p) for n, p, _ in row) == pytest.approx(
        dict(zip(labels.names, expected[0].tolist())), abs=1e-6)
