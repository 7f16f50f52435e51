"""`bench score --data-file`: the GoEmotions TSV, or a table in the model's own layout."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from mlc_dist.artifacts import ModelMeta
from mlc_dist.bench_score import read_data
from mlc_dist.config import JobConfigError
from mlc_dist.demo import write_demo
from mlc_dist.labels import LabelSpace

JIGSAW = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")


def _meta(names=JIGSAW, text="comment_text"):
    return ModelMeta(LabelSpace.from_names(names), [0.5] * len(names), text, None, 64, "m")


def test_a_jigsaw_csv_gives_its_texts_and_labels_repeated_to_the_rows(tmp_path):
    train = write_demo(str(tmp_path), 30)["train"]
    table = pacsv.read_csv(train)
    texts, labels = read_data(train, 70, _meta())
    want = table.column("comment_text").to_pylist()
    assert texts == [want[i % 30] for i in range(70)]
    expected = np.stack([table.column(n).to_numpy() for n in JIGSAW], axis=1)
    assert labels.dtype == np.int8 and labels.shape == (70, 6)
    np.testing.assert_array_equal(labels, expected[np.arange(70) % 30])
    assert labels[:30].sum() > 0  # the generated rows do carry positives


def test_without_every_label_column_only_the_texts(tmp_path):
    path = str(tmp_path / "rows.parquet")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"comment_text": ["a", "b", None], "toxic": [0, 1, 0]}), path)
    texts, labels = read_data(path, 0, _meta())
    assert texts == ["a", "b", ""] and labels is None


def test_a_goemotions_tsv_reads_label_ids(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("one\t0,2\tx1\ntwo\t1\tx2\n")
    texts, labels = read_data(str(path), 3, _meta(("a", "b", "c"), "text"))
    assert texts == ["one", "two", "one"]
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


def test_a_missing_text_column_or_a_minus_one_label_is_named(tmp_path):
    path = str(tmp_path / "rows.csv")
    pacsv.write_csv(pa.table({"text": ["a"], **{n: [0] for n in JIGSAW}}), path)
    with pytest.raises(JobConfigError, match=r"rows.csv needs the model's one text column "
                                              r"\['comment_text'\]"):
        read_data(path, 0, _meta())
    pacsv.write_csv(pa.table({"comment_text": ["a", "b"],
                              **{n: [0, -1 if n == "threat" else 1] for n in JIGSAW}}), path)
    with pytest.raises(JobConfigError, match=r"label columns \['threat'\] hold values other"):
        read_data(path, 0, _meta())
