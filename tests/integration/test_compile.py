"""train.compile: torch.compile(dynamic=False) of the DDP model through strategy.prepare, on
CPU (inductor) for a tiny BERT: same losses as eager, and an export without `_orig_mod.` keys
that the Scorer loads. One worker, so Ray's prepare_model leaves the model unwrapped (patched
here: no Train session). Among the integration tests because inductor compiles C++ kernels on
CPU: about 35 s of CPU, minutes of wall time on a busy 2-core box."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mlc_dist import data, strategy
from mlc_dist.artifacts import ModelMeta, save_export
from mlc_dist.config import ModelConfig, TrainConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model
from mlc_dist.scoring import Scorer

LABELS = LabelSpace.from_names(["a", "b", "c"])


@pytest.fixture
def engine_for(monkeypatch, tiny_bert):
    import ray.train.torch

    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model, **_: model)

    def make(compile: bool):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=tiny_bert, dropout=0.0), LABELS)
        cfg = TrainConfig(compile=compile, precision="fp32", warmup_ratio=0.0, lr=1e-3)
        return strategy.prepare(model, cfg, num_training_steps=10, num_shapes=4)
    return make


def steps(engine, num_steps=2):
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(num_steps):
        ids = torch.randint(1000, 2000, (4, 16), generator=g)
        mask = torch.ones(4, 16, dtype=torch.long)
        mask[1, 10:] = 0
        labels = torch.randint(0, 2, (4, 3), generator=g).float()
        with engine.accumulate():
            with engine.autocast():
                logits = engine.model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
            engine.backward(loss)
        assert engine.step()
        losses.append(float(loss.detach()))
    return losses


def test_compiled_training_matches_eager_and_exports_plain_keys(engine_for, tiny_bert,
                                                                 tmp_path):
    eager = engine_for(False)
    compiled = engine_for(True)
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.description.get("compiled") is True
    start = time.perf_counter()
    got = steps(compiled)
    print(f"compiled steps: {time.perf_counter() - start:.1f}s")  # the compile itself
    ref = steps(eager)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    keys = list(compiled.module.state_dict())
    assert keys and not any("_orig_mod" in k for k in keys), keys[:3]
    from transformers import AutoTokenizer

    export = str(tmp_path / "export")
    save_export(export, compiled.module, AutoTokenizer.from_pretrained(tiny_bert),
                ModelMeta(LABELS, [0.5] * 3, "text", None, 32, tiny_bert),
                compiled.export_state_dict())
    tok = data.Tokenize(export, 32, keep=[])
    scores = Scorer(export, [])(tok({"text": np.array(["hello there", "a b c d"])}))
    assert np.isfinite(scores["score_a"]).all()
