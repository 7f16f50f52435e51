"""score.batch_size and score.num_actors default by device: 256 rows on a GPU actor, 64 on CPU;
one actor per cluster GPU on a GPU job, else 1. No GPU here: the device and Ray's resource view
are patched."""

import pytest
import torch

from mlc_dist.config import validate_job
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer, pipeline
from ..conftest import export_tiny_model


def job(**sections):
    return validate_job({"run": {"name": "t"}, **sections})


def test_unset_keys_validate_and_explicit_ones_win():
    sc = job().score
    assert sc.batch_size is None and sc.num_actors is None
    sc = job(score={"batch_size": 8, "num_actors": 3}).score
    assert (sc.batch_size, sc.num_actors) == (8, 3)
    with pytest.raises(Exception, match="num_actors"):
        job(score={"num_actors": 0})


def test_batch_size_defaults_by_device():
    assert pipeline.default_batch_size(torch.device("cpu")) == 64
    assert pipeline.default_batch_size(torch.device("cuda", 0)) == 256


@pytest.mark.parametrize("use_gpu,gpus,explicit,expected", [
    (False, 4.0, None, 1),  # a CPU job: one actor, whatever the cluster holds
    (True, 4.0, None, 4),  # one per GPU
    (True, 0.0, None, 1),  # an autoscaling cluster with no GPU node up yet: at least 1
    (True, 4.0, 2, 2),  # explicit wins
])
def test_pool_size_is_the_clusters_gpus_on_a_gpu_job(monkeypatch, use_gpu, gpus, explicit,
                                                     expected):
    monkeypatch.setattr(pipeline.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": gpus})
    j = job(scaling={"use_gpu": use_gpu}, score={"num_actors": explicit})
    assert pipeline.pool_size(j) == expected


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert,
                             LabelSpace.from_names(["a", "b"]), "text", 32)


def test_scorer_takes_its_devices_default(exported, monkeypatch):
    assert Scorer(exported, []).batch_size == 64  # CPU
    assert Scorer(exported, [], batch_size=5).batch_size == 5
    # A GPU actor: pretend Ray assigned one (the model stays on CPU: no real GPU here).
    monkeypatch.setattr(pipeline, "assigned_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(pipeline, "resolve_precision", lambda *a: "fp32")
    assert Scorer(exported, []).batch_size == 256
