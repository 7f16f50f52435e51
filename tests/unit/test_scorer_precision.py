"""The scorer casts its model once for its precision, and bf16 scores stay close to fp32 on
spread-out scores (the spread is asserted first, so a constant cannot pass). The CPU twin of
tests/gpu/test_cuda_scoring.py."""

import numpy as np
import torch

from mlc_dist.scoring import Scorer

from ..families import spread_bert_export

TEXTS = ["short", "a longer text here", "you are an idiot and a clown", "thanks for the references",
         "please stop the vandalism on this talk page or you will be blocked", "good point"]


def test_bf16_casts_the_model_once_and_stays_near_fp32(tmp_path):
    model_dir, batch, space = spread_bert_export(tmp_path, TEXTS)
    fp32 = Scorer(model_dir, [], precision="fp32", batch_size=4)
    bf16 = Scorer(model_dir, [], precision="bf16", batch_size=4)
    dtypes = lambda scorer: {p.dtype for p in scorer.model.parameters()}  # noqa: E731
    assert dtypes(fp32) == {torch.float32} and dtypes(bf16) == {torch.bfloat16}
    a, b = fp32(dict(batch)), bf16(dict(batch))
    exact = np.stack([a[f"score_{n}"] for n in space.names], 1)
    low = np.stack([b[f"score_{n}"] for n in space.names], 1)
    assert exact.min() < 0.2 and exact.max() > 0.8 and exact.std() > 0.2, exact
    diff = np.abs(low - exact)
    assert diff.max() > 0, "bf16 scores equal fp32's: bf16 did not run"
    assert diff.mean() < 0.02 and diff.max() < 0.1, (diff.mean(), diff.max())
