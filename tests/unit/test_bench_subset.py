"""bench train's row subsets: the same rows for both sides, validation held out from training."""

from __future__ import annotations

from mlc_dist.bench import subset_job
from mlc_dist.config import validate_job


def _lines(path):
    return open(path, encoding="utf-8").read().splitlines()


def test_without_a_validation_file_the_rows_after_the_training_rows_validate(tmp_path):
    source = tmp_path / "all.tsv"
    source.write_text("".join(f"text {i}\t{i % 3}\tid{i}\n" for i in range(50)))
    job = validate_job({"run": {"name": "b"}, "data": {
        "train": str(source), "format": "tsv", "header": False,
        "column_names": ["text", "labels", "id"], "label_list_column": "labels",
        "label_names": ["a", "b", "c"], "id_columns": ["id"]}})
    sub = subset_job(job, str(tmp_path), samples=20, val_rows=10)
    train, val = _lines(sub.data.train), _lines(sub.data.validation)
    assert [r.split("\t")[2] for r in train] == [f"id{i}" for i in range(20)]
    assert [r.split("\t")[2] for r in val] == [f"id{i}" for i in range(20, 30)]
    assert sub.train.epochs == 1 and sub.train.max_steps is None


def test_a_validation_file_keeps_its_header_and_first_rows(tmp_path):
    rows = "".join(f"t{i},{i % 2}\n" for i in range(30))
    (tmp_path / "train.csv").write_text("comment_text,toxic\n" + rows)
    (tmp_path / "valid.csv").write_text("comment_text,toxic\n" + rows)
    job = validate_job({"run": {"name": "b"}, "data": {
        "train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "valid.csv"),
        "text_column": "comment_text", "label_columns": ["toxic"]}})
    work = tmp_path / "work"
    work.mkdir()
    sub = subset_job(job, str(work), samples=5, val_rows=4)
    assert _lines(sub.data.train) == ["comment_text,toxic", *[f"t{i},{i % 2}" for i in range(5)]]
    assert _lines(sub.data.validation) == ["comment_text,toxic",
                                           *[f"t{i},{i % 2}" for i in range(4)]]
