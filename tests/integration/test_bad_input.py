"""Each bad-input case gives a clear error naming the file, column or row (real Ray Data)."""

from __future__ import annotations

import pyarrow.csv as pacsv
import pytest

from mlc_dist import data
from mlc_dist.cli import _user_error
from mlc_dist.demo import JIGSAW_LABELS, generate

from .helpers import demo_job


def _fails_with(job, *fragments):
    with pytest.raises(Exception) as err:
        data.prepare(job.data, seed=0)
    found = _user_error(err.value)
    assert found is not None, f"not a user error: {err.value!r}"
    for fragment in fragments:
        assert fragment in str(found), str(found)


def test_missing_file(tmp_path, tiny_bert, ray_cluster):
    job = demo_job(tmp_path, tiny_bert, rows=50, data={"train": str(tmp_path / "nope.csv")})
    _fails_with(job, "nope.csv", "not found")


def test_missing_column(tmp_path, tiny_bert, ray_cluster):
    table = generate(60).drop_columns(["threat"])
    path = tmp_path / "no_threat.csv"
    pacsv.write_csv(table, path)
    job = demo_job(tmp_path, tiny_bert, rows=50, data={"train": str(path)})
    _fails_with(job, "no_threat.csv", "missing column", "threat")


def test_label_outside_the_label_space(tmp_path, tiny_bert, ray_cluster):
    table = generate(60)
    values = table.column("insult").to_pylist()
    values[17] = 3
    table = table.set_column(table.column_names.index("insult"), "insult", [values])
    path = tmp_path / "bad_value.csv"
    pacsv.write_csv(table, path)
    job = demo_job(tmp_path, tiny_bert, rows=50, data={"train": str(path)})
    _fails_with(job, "bad_value.csv", table.column("id")[17].as_py(), "insult", "3")


def test_unreadable_file(tmp_path, tiny_bert, ray_cluster):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    job = demo_job(tmp_path, tiny_bert, rows=50, data={"train": str(path)})
    with pytest.raises(Exception) as err:
        data.prepare(job.data, seed=0)
    assert "broken.parquet" in str(err.value)


def test_empty_texts_are_counted_not_silently_dropped(tmp_path, tiny_bert, ray_cluster):
    table = generate(200)
    texts = table.column("comment_text").to_pylist()
    for i in (3, 50, 120):
        texts[i] = "   " if i == 50 else None
    table = table.set_column(1, "comment_text", [texts])
    path = tmp_path / "gaps.csv"
    pacsv.write_csv(table, path)
    job = demo_job(tmp_path, tiny_bert, rows=50, data={"train": str(path)})
    prepared = data.prepare(job.data, seed=0)
    empty = prepared.train_stats.num_empty_text + prepared.validation_stats.num_empty_text
    assert empty == 3
    assert prepared.train.count() + prepared.validation.count() == 197
    assert list(prepared.label_space.names) == list(JIGSAW_LABELS)
