"""`bench score` / `bench train` report MFU with the GPU's name: the same keys on every device,
None on CPU (no peak to divide by). No GPU here: a GPU name stands in for one."""

import pytest

from mlc_dist import bench, scale
from mlc_dist.bench_score import efficiency


def test_score_efficiency_keys_are_none_on_cpu():
    out = efficiency(None, None, 1000, {"ours": 2.0, "ours_steady": 1.5, "pipeline": 3.0,
                                        "bare": 1.0})
    assert out == {"gpu": None, "peak_tflops": None, "ours_mfu": None, "ours_steady_mfu": None,
                   "pipeline_mfu": None, "bare_mfu": None}


def test_score_efficiency_on_a_named_gpu():
    # 1e9 FLOPs per token, 1000 tokens in a microsecond
    out = efficiency("NVIDIA H100 80GB HBM3", 1e9, 1000, {"ours": 1e-6, "bare": None})
    assert out["peak_tflops"] == 989.0 and out["bare_mfu"] is None
    assert out["ours_mfu"] == pytest.approx(1e9 * 1000 / 1e-6 / 989e12, abs=1e-4)


def test_train_efficiency_none_on_cpu_and_a_fraction_on_a_gpu(monkeypatch):
    runs = {"ours": {"samples_per_s": 100.0, "tokens_per_s": 4000.0},
            "hf_trainer": {"samples_per_s": 0.0, "tokens_per_s": 0.0}}
    assert bench.train_efficiency("m", None, runs) == {"gpu": None, "ours_mfu": None,
                                                       "hf_trainer_mfu": None}
    seen = []
    monkeypatch.setattr(scale, "training_flops_per_token",
                        lambda name, seq: seen.append(seq) or 6e9)
    out = bench.train_efficiency("m", "NVIDIA A100-SXM4-80GB", runs)
    assert seen == [40.0]  # tokens per sample
    assert out["ours_mfu"] == pytest.approx(6e9 * 4000 / 312e12, abs=1e-4)
    assert out["hf_trainer_mfu"] is None and out["gpu"] == "NVIDIA A100-SXM4-80GB"


def test_forward_flops_are_a_third_of_training(monkeypatch):
    monkeypatch.setattr(scale, "training_flops_per_token", lambda name, seq: 9.0)
    assert scale.forward_flops_per_token("m", 10) == 3.0
    assert scale.utilisation(1.0, None, "H100") is None
    assert scale.utilisation(1.0, 1.0, None) is None
