"""The scorer casts its model once for its precision and keeps fp32 scores close on spread-out
outputs (a constant 0.5 cannot pass: the spread is asserted first)."""

import numpy as np
import pytest
import torch

from mlc_dist import data
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
TEXTS = ["short", "a somewhat longer comment about the article and more", "mid length text",
         "you are a very bad person", "thanks for the edit", "the threat was real and loud"]


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    directory = export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                                  "comment_text", 32)
    from safetensors.torch import load_file, save_file

    # Widen the classifier so the scores spread over most of (0, 1).
    path = f"{directory}/model.safetensors"
    weights = load_file(path)
    for k in weights:
        if k.startswith("classifier."):
            weights[k] = weights[k] * 40
    save_file(weights, path, metadata={"format": "pt"})
    return directory


def scores(model_dir, precision):
    tok = data.Tokenize(model_dir, 32, keep=["id"])
    batch = tok({"text": np.array(TEXTS), "id": np.arange(len(TEXTS))})
    scorer = Scorer(model_dir, ["id"], precision=precision, batch_size=4)
    out = scorer(batch)
    dtypes = {p.dtype for p in scorer.model.parameters()}
    return np.stack([out[f"score_{n}"] for n in LABELS.names], 1), dtypes


def test_bf16_casts_the_model_once_and_stays_near_fp32(exported):
    fp32, fp32_types = scores(exported, "fp32")
    bf16, bf16_types = scores(exported, "bf16")
    assert fp32_types == {torch.float32} and bf16_types == {torch.bfloat16}
    assert fp32.max() - fp32.min() > 0.5, "scores must spread for the comparison to mean much"
    np.testing.assert_allclose(bf16, fp32, atol=0.05)
    assert not np.allclose(bf16, fp32, atol=1e-6)  # it did run in bf16
