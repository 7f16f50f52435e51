"""On a CUDA machine: bf16 scoring agrees with fp32 and the model really runs on the GPU."""

import numpy as np

from mlc_dist.data import Tokenize
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer
from ..conftest import export_tiny_model


def test_bf16_scores_match_fp32_on_gpu(tiny_bert, tmp_path):
    space = LabelSpace.from_names(["a", "b", "c"])
    export_tiny_model(tmp_path, tiny_bert, space)
    batch = Tokenize(str(tmp_path), 64, keep=[])({"text": np.array(["short", "a longer text here"] * 8)})
    fp32 = Scorer(str(tmp_path), [], precision="fp32")
    bf16 = Scorer(str(tmp_path), [], precision="bf16")
    assert fp32.device.type == "cuda" and next(fp32.model.parameters()).is_cuda
    a, b = fp32(dict(batch)), bf16(dict(batch))
    for col in ("score_a", "score_b", "score_c"):
        np.testing.assert_allclose(a[col], b[col], atol=2e-2)
