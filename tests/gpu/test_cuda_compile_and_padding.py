"""On a CUDA machine: a GPU scorer takes 256-row batches by default and pads to multiples of 16
without changing scores; train.compile trains a tiny BERT on the GPU with eager's losses; the
benchmarks' efficiency figures name the GPU and give an MFU."""

import numpy as np
import pytest
import torch

from mlc_dist import strategy
from mlc_dist.bench_score import efficiency
from mlc_dist.config import ModelConfig, TrainConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model
from mlc_dist.scoring import Scorer

from ..families import spread_bert_export

TEXTS = ["short", "a longer text here", "you are an idiot and a clown",
         "please stop the vandalism on this talk page or you will be blocked"] * 8


def test_gpu_scorer_batches_by_device_and_pads_to_16_with_equal_scores(tmp_path):
    model_dir, batch, space = spread_bert_export(tmp_path, TEXTS)
    plain = Scorer(model_dir, [], precision="fp32")
    padded = Scorer(model_dir, [], precision="fp32", pad_to_multiple_of=16)
    assert plain.batch_size == 256
    widths = []
    padded.model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    a, b = plain(dict(batch)), padded(dict(batch))
    assert widths and all(w % 16 == 0 for w in widths), widths
    for n in space.names:
        np.testing.assert_allclose(a[f"score_{n}"], b[f"score_{n}"], atol=1e-4)


def test_compiled_training_on_gpu_matches_eager(monkeypatch, tiny_bert):
    import ray.train.torch

    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(ray.train.torch, "prepare_model",
                        lambda model, **_: model.to("cuda"))
    labels = LabelSpace.from_names(["a", "b", "c"])

    def losses(compile):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=tiny_bert, dropout=0.0), labels)
        engine = strategy.prepare(model, TrainConfig(compile=compile, precision="fp32",
                                                     warmup_ratio=0.0, lr=1e-3), 10,
                                  num_shapes=4)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(2):
            ids = torch.randint(1000, 2000, (8, 32), generator=g).cuda()
            y = torch.randint(0, 2, (8, 3), generator=g).float().cuda()
            with engine.accumulate():
                logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
                engine.backward(loss)
            assert engine.step()
            out.append(float(loss.detach()))
        assert not any("_orig_mod" in k for k in engine.module.state_dict())
        return out

    np.testing.assert_allclose(losses(True), losses(False), rtol=1e-3, atol=1e-4)


def test_efficiency_names_this_gpu():
    name = torch.cuda.get_device_name(0)
    out = efficiency(name, 1e8, 10_000, {"bare": 0.01})
    if out["peak_tflops"] is None:
        pytest.skip(f"{name}: no peak in scale.PEAK_TFLOPS")
    assert out["gpu"] == name and 0 < out["bare_mfu"]
