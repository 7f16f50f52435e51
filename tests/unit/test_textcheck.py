"""The scoring input policy and window-sorted scoring, on plain batches: no Ray."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from mlc_dist import data
from mlc_dist.artifacts import load_export
from mlc_dist.labels import LabelSpace
from mlc_dist.scoring import Scorer
from mlc_dist.scoring.textcheck import CheckText
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["a", "b", "c", "d"])


def check(batch, **kw):
    args = {"on_bad_text": "quarantine", "on_long_text": "truncate", "max_chars": 10} | kw
    return CheckText("text", ["id"], **args)(batch)


def test_each_bad_row_class_gets_its_reason():
    batch = pa.table({"id": ["a", "b", "c", "d", "e"],
                      "text": pa.array([b"fine", b"\xff\xfe bad", None, b"x" * 25, b""],
                                       pa.binary())})
    out = check(batch)
    assert out.column("_reason").to_pylist() == ["", "invalid_utf8", "null_text", "truncated", ""]
    assert out.column("text").to_pylist() == ["fine", "", "", "x" * 10, ""]
    out = check(batch, on_long_text="quarantine")
    assert out.column("_reason").to_pylist()[3] == "too_long"
    ints = pa.table({"id": ["a", "b"], "text": pa.array([1, None], pa.int64())})
    assert check(ints).column("_reason").to_pylist() == ["non_string_text", "non_string_text"]


def test_fail_policy_names_the_row():
    batch = pa.table({"id": ["ok", "r7"], "text": pa.array(["fine", None], pa.string())})
    with pytest.raises(data.DataError, match=r"id='r7'.*null text.*on_bad_text"):
        check(batch, on_bad_text="fail")


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_scores_do_not_depend_on_batch_composition(exported, batch_size):
    from mlc_dist.demo import generate

    texts = generate(150, seed=3).column("comment_text").to_pylist()
    reasons = np.array(["" if i % 11 else "null_text" for i in range(len(texts))], dtype=object)
    batch = data.Tokenize(exported, 64, keep=["id", "_reason"])(
        {"text": np.array(texts, dtype=object), "id": np.arange(len(texts)), "_reason": reasons})
    out = Scorer(exported, ["id"], batch_size=batch_size)(batch)
    got = np.stack([out[f"score_{n}"] for n in LABELS.names], axis=1)
    model, tokenizer, _ = load_export(exported)
    with torch.inference_mode():  # the reference: one row at a time, no padding at all
        ref = np.concatenate([torch.sigmoid(model(**tokenizer([t], truncation=True, max_length=64,
                              return_tensors="pt")).logits).numpy() for t in texts])
    assert out["id"].tolist() == list(range(len(texts)))  # window order restored
    skipped = reasons != ""
    assert np.isnan(got[skipped]).all() and (out["pred_a"][skipped] == 0).all()
    np.testing.assert_allclose(got[~skipped], ref[~skipped], atol=1e-5, rtol=0)


STRING_LIKE = {"dictionary": lambda a: a.dictionary_encode(), "string_view": pa.string_view(),
               "large_string": pa.large_string(), "binary": pa.binary(),
               "large_binary": pa.large_binary()}


@pytest.mark.parametrize("kind", list(STRING_LIKE))
def test_string_like_texts_and_ids_are_normalised_before_the_check(kind):
    # A pandas categorical becomes dictionary<string> in Parquet: text, not "non_string_text".
    convert = STRING_LIKE[kind]
    as_kind = (lambda values: convert(pa.array(values))) if callable(convert) else \
        (lambda values: pa.array(values).cast(convert))
    batch = pa.table({"id": as_kind(["a", "b", "c", "d"]),
                      "text": as_kind(["fine", None, "x" * 25, "ok"])})
    out = check(batch)
    assert out.column("_reason").to_pylist() == ["", "null_text", "truncated", ""]
    assert out.column("text").to_pylist() == ["fine", "", "x" * 10, "ok"]
    assert out.column("id").type == pa.string()
    assert out.column("id").to_pylist() == ["a", "b", "c", "d"]


def test_rows_the_reader_could_not_read_are_quarantined_with_file_and_line():
    from mlc_dist.scoring.textcheck import quarantine_rows, quarantine_schema

    batch = pa.table({"id": ["a", None, "c"], "text": ["fine", None, None],
                      "_line": pa.array([2, 3, 5], pa.int64()),
                      "_read_error": ["", "wrong_field_count", ""]})
    out = check(batch)
    assert out.column("_reason").to_pylist() == ["", "wrong_field_count", "null_text"]
    assert out.column("_line").to_pylist() == [2, 3, 5]
    bad = out.filter(pa.array([False, True, True]))
    q = quarantine_rows(bad, ["id"], "/in/drop.csv", quarantine_schema([pa.field("id", pa.string())]))
    assert q.to_pydict() == {"id": [None, "c"], "input_file": ["/in/drop.csv"] * 2,
                             "input_line": [3, 5], "reason": ["wrong_field_count", "null_text"]}
    with pytest.raises(data.DataError, match=r"line 3: row id=None: row has wrong field count"):
        check(batch, on_bad_text="fail")
