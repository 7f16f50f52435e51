"""train.compile's config checks: DDP only, and padded shapes (data.pad_to_multiple_of > 1)."""

import pytest

from mlc_dist.config import validate_job


def job(**sections):
    return validate_job({"run": {"name": "t"}, **sections})


def test_compile_is_refused_with_deepspeed_and_without_padded_shapes():
    with pytest.raises(Exception, match="train.compile needs train.strategy: ddp"):
        job(train={"compile": True, "strategy": "deepspeed"})
    with pytest.raises(Exception, match="train.compile needs data.pad_to_multiple_of > 1"):
        job(train={"compile": True})  # CPU: the multiple defaults to 1
    assert job(train={"compile": True}, scaling={"use_gpu": True}).pad_multiple == 16
    ok = job(train={"compile": True}, data={"pad_to_multiple_of": 16, "max_length": 128})
    assert ok.compile_shapes == 2 * (128 // 16 + 1)
