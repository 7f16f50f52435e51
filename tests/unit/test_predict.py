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


def test_a_model_reading_several_columns_takes_json_objects(tiny_bert, tmp_path):
    import json

    from typer.testing import CliRunner

    from mlc_dist.artifacts import read_meta, write_meta
    from mlc_dist.cli import app

    labels = LabelSpace.from_names(["security", "benevolence"])
    model_dir = export_tiny_model(tmp_path / "m", tiny_bert, labels)
    (by_text,) = predict_texts(model_dir, ["We should ban whaling [SEP] in favor of [SEP] it is "
                                           "cruel"])
    template = "{Conclusion} [SEP] {Stance} [SEP] {Premise}"
    meta = read_meta(model_dir)
    meta.text_column = meta.text_template = template
    write_meta(model_dir, meta)
    row = {"Conclusion": "We should ban whaling", "Stance": "in favor of",
           "Premise": "it is cruel"}
    # The same weights given the columns read the text training composed from them.
    (by_columns,) = predict_texts(model_dir, [row])
    assert {n: p for n, p, _ in by_columns} == pytest.approx({n: p for n, p, _ in by_text},
                                                             abs=1e-6)
    with pytest.raises(Exception, match="as a string"):
        predict_texts(export_tiny_model(tmp_path / "one", tiny_bert, labels), [row])

    result = CliRunner().invoke(app, ["predict", model_dir, json.dumps(row)])
    assert result.exit_code == 0, result.output
    assert "security" in result.output
    result = CliRunner().invoke(app, ["predict", model_dir, "just a text"])
    assert result.exit_code == 2
    assert "['Conclusion', 'Stance', 'Premise']" in result.output
