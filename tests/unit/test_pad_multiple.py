"""data.pad_to_multiple_of: every batch (training collate, scoring) is padded to its longest row
rounded up to the multiple, never past data.max_length; scores do not change. No Ray."""

import numpy as np
import pytest
import torch

from mlc_dist import data
from mlc_dist.config import validate_job
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer
from mlc_dist.train.worker import Collate
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult", "threat"])
MAX_LENGTH = 40  # not a multiple of 16: the longest batches are capped at 40, not 48


def ragged(lengths, start=1000, type_ids=False):
    rows = np.empty(len(lengths), dtype=object)
    rows[:] = [np.arange(start, start + n, dtype=np.int32) for n in lengths]
    batch = {"input_ids": rows}
    if type_ids:
        types = np.empty(len(lengths), dtype=object)
        types[:] = [np.ones(n, dtype=np.int8) for n in lengths]
        batch["token_type_ids"] = types
    return batch


def test_padded_width_rounds_up_and_never_past_max_length():
    assert [data.padded_width(n, 16) for n in (1, 16, 17, 33)] == [16, 16, 32, 48]
    assert data.padded_width(35, 16, max_width=40) == 40  # capped, not 48
    assert data.padded_width(17, 16, max_width=40) == 32
    assert data.padded_width(45, 16, max_width=40) == 45  # a longer row is never cut
    assert data.padded_width(7, 1, max_width=40) == 7 and data.padded_width(0, 16) == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_pads_to_the_multiple_on_the_tokenizers_side(side):
    batch = ragged([3, 18, 5], type_ids=True)
    out = data.pad_batch(batch, pad_token_id=0, padding_side=side, multiple=16, max_width=128)
    assert out["input_ids"].shape == out["attention_mask"].shape == (3, 32)
    assert out["token_type_ids"].shape == (3, 32)
    assert out["attention_mask"].sum(axis=1).tolist() == [3, 18, 5]
    for i, row in enumerate(batch["input_ids"]):
        kept = out["input_ids"][i][out["attention_mask"][i] == 1]
        np.testing.assert_array_equal(kept, row)
        pads = out["input_ids"][i][out["attention_mask"][i] == 0]
        assert (pads == 0).all() and (out["token_type_ids"][i][out["attention_mask"][i] == 0]
                                      == 0).all()
    first = out["attention_mask"][0]
    assert (first[:3] == 1).all() if side == "right" else (first[-3:] == 1).all()
    capped = data.pad_batch(ragged([35, 2]), 0, side, multiple=16, max_width=MAX_LENGTH)
    assert capped["input_ids"].shape == (2, MAX_LENGTH)


def test_training_collate_pads_to_the_multiple():
    batch = {**ragged([3, 9]), data.LABELS: np.array([[1, 0], [0, 1]], dtype=np.int8)}
    out = Collate(0, "right", 16, 128)(batch)
    assert out["input_ids"].shape == (2, 16) and out["labels"].shape == (2, 2)
    assert Collate(0)(batch)["input_ids"].shape == (2, 9)  # multiple 1: the longest row


def test_pad_multiple_defaults_by_device_and_validates():
    job = lambda **kw: validate_job({"run": {"name": "t"}, **kw})  # noqa: E731
    assert job().pad_multiple == 1  # CPU: every padded token costs time
    assert job(scaling={"use_gpu": True}).pad_multiple == 16
    assert job(data={"pad_to_multiple_of": 8}).pad_multiple == 8
    assert job(scaling={"use_gpu": True}, data={"pad_to_multiple_of": 1}).pad_multiple == 1
    with pytest.raises(Exception, match="pad_to_multiple_of"):
        job(data={"pad_to_multiple_of": 0})


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                             "comment_text", MAX_LENGTH)


def test_scores_equal_with_and_without_the_multiple_and_shapes_are_multiples(exported):
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    texts = [" ".join(words[:n] * (1 + n // 6)) for n in range(1, 12)] + ["word " * 60]
    tok = data.Tokenize(exported, MAX_LENGTH, keep=["id"])
    batch = tok({"text": np.array(texts), "id": np.array([f"r{i}" for i in range(len(texts))])})
    plain = Scorer(exported, ["id"], batch_size=4)
    padded = Scorer(exported, ["id"], batch_size=4, pad_to_multiple_of=16)
    widths = []
    padded.model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    ref, got = plain(batch), padded(batch)
    assert widths and all(w % 16 == 0 or w == MAX_LENGTH for w in widths), widths
    assert MAX_LENGTH in widths  # the truncated row's batch: capped at max_length, not 48
    assert any(w % 16 == 0 for w in widths)
    longest = max(len(r) for r in batch["input_ids"])
    assert longest == MAX_LENGTH
    for name in LABELS.names:
        np.testing.assert_allclose(got[f"score_{name}"], ref[f"score_{name}"], atol=1e-5)
    assert isinstance(padded.model, torch.nn.Module)
