"""On a CUDA machine: scoring runs on the GPU, and bf16 scores agree with fp32 on scores that are
spread out (a random tiny model's all lie within 0.5 +- 0.01, where any tolerance passes a
constant)."""

import numpy as np
import torch

from mlc_dist.precision import native_bf16
from mlc_dist.scoring import Scorer

from ..families import spread_bert_export

TEXTS = ["short", "a longer text here", "you are an idiot and a clown", "thanks for the references",
         "please stop the vandalism on this talk page or you will be blocked", "good point",
         "what a nice day", "the references on this page are wrong"] * 4


def test_bf16_scores_match_fp32_on_gpu(tmp_path):
    model_dir, batch, space = spread_bert_export(tmp_path, TEXTS)
    fp32 = Scorer(model_dir, [], precision="fp32")
    bf16 = Scorer(model_dir, [], precision="bf16")
    auto = Scorer(model_dir, [], precision="auto")
    assert fp32.device.type == "cuda" and next(fp32.model.parameters()).is_cuda
    dtypes = lambda scorer: {p.dtype for p in scorer.model.parameters()}  # noqa: E731
    assert dtypes(fp32) == {torch.float32} and dtypes(bf16) == {torch.bfloat16}
    assert dtypes(auto) == {torch.bfloat16 if native_bf16(auto.device) else torch.float16}
    a, b = fp32(dict(batch)), bf16(dict(batch))
    exact = np.stack([a[f"score_{n}"] for n in space.names], 1)
    low = np.stack([b[f"score_{n}"] for n in space.names], 1)
    # Spread out: the scores cover most of (0, 1) and differ from row to row.
    assert exact.min() < 0.2 and exact.max() > 0.8 and exact.std() > 0.2, exact
    # bf16 really ran (its 8-bit mantissa moves the scores) and stays close to fp32: 0.02 on
    # average (0.1 at worst, where a logit of +-3 is steep) against a spread of 0.2 or more, so
    # a constant, a shuffled row or a wrong position fails.
    diff = np.abs(low - exact)
    assert diff.max() > 0, "bf16 scores equal fp32's: bf16 did not run"
    assert diff.mean() < 0.02 and diff.max() < 0.1, (diff.mean(), diff.max())
    assert np.array_equal(b["pred_a"], (low[:, 0] >= 0.5).astype(np.int8))
