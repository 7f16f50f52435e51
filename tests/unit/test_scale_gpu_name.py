"""`mlc-dist scale` names the GPU the workers get (a Ray task holding one), not the driver's."""

from types import SimpleNamespace

import ray

from mlc_dist import scale


def test_cpu_job_has_no_gpu_name_and_asks_ray_nothing(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: 1 / 0)  # must not be called
    assert scale.worker_gpu_name(False) is None
    assert scale.peak_tflops(scale.worker_gpu_name(False)) is None


def test_gpu_job_asks_a_task_that_holds_a_gpu(monkeypatch):
    asked = {}

    def remote(**options):
        asked.update(options)
        return lambda fn: SimpleNamespace(remote=lambda: fn)

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "get", lambda fn, timeout: "NVIDIA H200" if asked.get(
        "num_gpus") == 1 else "driver")
    assert scale.worker_gpu_name(True) == "NVIDIA H200"
    assert scale.peak_tflops("NVIDIA H200") == 989.0


def test_gpu_job_on_a_cluster_without_gpus_gives_none(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert scale.worker_gpu_name(True) is None
