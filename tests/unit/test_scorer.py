"""Scorer.__call__ on dict batches with a tiny exported model: no Ray."""

import numpy as np
import pytest
import torch

from mlc_dist import data
from mlc_dist.artifacts import load_export, read_meta, write_meta
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                             "comment_text", 32)


def batch_for(model_dir, texts):
    tok = data.Tokenize(model_dir, 32, keep=["id"])
    return tok({"text": np.array(texts), "id": np.array([f"r{i}" for i in range(len(texts))])})


def test_scores_match_a_direct_forward_pass(exported):
    texts = ["short", "a somewhat longer comment about the article", "mid length text"]
    out = Scorer(exported, ["id"])(batch_for(exported, texts))
    assert list(out)[:4] == ["id", "score_toxic", "score_insult", "score_threat"]
    assert out["id"].tolist() == ["r0", "r1", "r2"]
    model, tokenizer, _ = load_export(exported)
    with torch.inference_mode():
        ref = torch.sigmoid(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    got = np.stack([out[f"score_{n}"] for n in LABELS.names], axis=1)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    assert got.dtype == np.float32 and out["pred_toxic"].dtype == np.int8


def test_stored_thresholds_decide_the_predictions(exported, tmp_path):
    import shutil

    texts = ["one", "two words", "three words here"]
    scores = Scorer(exported, ["id"])(batch_for(exported, texts))
    low = str(tmp_path / "low")
    shutil.copytree(exported, low)
    meta = read_meta(low)
    meta.thresholds = [0.0, 1.01, float(np.median(scores["score_threat"]))]
    write_meta(low, meta)
    out = Scorer(low, ["id"])(batch_for(low, texts))
    assert out["pred_toxic"].tolist() == [1, 1, 1]
    assert out["pred_insult"].tolist() == [0, 0, 0]
    assert out["pred_threat"].tolist() == (out["score_threat"] >= meta.thresholds[2]).astype(
        int).tolist()
