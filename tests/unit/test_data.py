"""Normalize / Tokenize / pad_batch / split called directly on batches: no Ray cluster."""

import numpy as np
import pyarrow as pa
import pytest

from mlc_dist import data
from mlc_dist.config import DataConfig
from mlc_dist.labels import LabelSpace

JIGSAW = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def jigsaw_batch(**override):
    cols = {"id": ["a1", "a2", "a3"], "comment_text": ["you fool", None, "nice edit"],
            "path": ["/d/train.csv"] * 3}
    cols.update({n: [0, 0, 0] for n in JIGSAW})
    cols["toxic"] = [1, 0, 0]
    cols["insult"] = [1, 0, 0]
    cols.update(override)
    return pa.table(cols)


def test_wide_layout_jigsaw():
    cfg = DataConfig(text_column="comment_text", id_columns=["id"], label_columns=JIGSAW)
    out = data.Normalize(cfg, LabelSpace.from_names(JIGSAW))(jigsaw_batch())
    labels = np.stack(out.column("labels").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(labels[0], [1, 0, 0, 0, 1, 0])
    assert labels[1:].sum() == 0
    # The null text is kept, flagged and blanked: counted by the caller, never dropped here.
    assert out.column("_empty").to_pylist() == [False, True, False]
    assert out.column("text").to_pylist() == ["you fool", "", "nice edit"]
    assert out.column("id").to_pylist() == ["a1", "a2", "a3"]
    assert out.column("_key").to_pylist() == ["a1", "a2", "a3"]


def test_wide_layout_rejects_values_other_than_0_1():
    cfg = DataConfig(text_column="comment_text", id_columns=["id"], label_columns=JIGSAW)
    with pytest.raises(data.DataError) as err:
        data.Normalize(cfg, LabelSpace.from_names(JIGSAW))(jigsaw_batch(threat=[0, 2, 0]))
    msg = str(err.value)
    assert "/d/train.csv" in msg and "'a2'" in msg and "threat" in msg and "2" in msg


def test_missing_column_names_file_and_column():
    cfg = DataConfig(text_column="comment_text", id_columns=["id"], label_columns=JIGSAW)
    batch = jigsaw_batch().drop_columns(["obscene"])
    with pytest.raises(data.DataError, match=r"/d/train.csv: missing column\(s\) \['obscene'\]"):
        data.Normalize(cfg, LabelSpace.from_names(JIGSAW))(batch)


def test_list_layout_with_ids_and_names():
    space = LabelSpace.from_names(["admiration", "anger", "neutral"])
    cfg = DataConfig(text_column="text", id_columns=["id"], label_list_column="labels",
                     label_names=list(space.names))
    batch = pa.table({"text": ["x", "y", "z"], "labels": ["0,2", "1", "neutral"],
                      "id": ["e1", "e2", "e3"], "path": ["/g/train.tsv"] * 3})
    labels = np.stack(data.Normalize(cfg, space)(batch).column("labels").to_numpy(
        zero_copy_only=False))
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    bad = batch.set_column(1, "labels", pa.array(["0", "28", "1"]))
    with pytest.raises(data.DataError) as err:
        data.Normalize(cfg, space)(bad)
    assert "/g/train.tsv" in str(err.value) and "'e2'" in str(err.value) and "'28'" in str(err.value)


def test_separate_labels_table_joined_on_id_and_text_pair():
    cfg = DataConfig(text_column="Premise", text_pair_column="Conclusion",
                     id_columns=["Argument ID"], train_labels="labels.tsv")
    labels_table = pa.table({"Argument ID": ["A1", "A2"], "Self-direction": [1, 0],
                             "Security": [0, 1]})
    space = data.label_space_for(cfg, labels_table)
    assert space.names == ("Self-direction", "Security")
    batch = pa.table({"Argument ID": ["A2", "A1"], "Conclusion": ["c2", "c1"],
                      "Stance": ["against", "in favor of"], "Premise": ["p2", "p1"],
                      "path": ["/v/args.tsv"] * 2})
    out = data.Normalize(cfg, space, labels_table)(batch)
    labels = np.stack(out.column("labels").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(labels, [[0, 1], [1, 0]])
    assert out.column("text_pair").to_pylist() == ["c2", "c1"]
    orphan = batch.set_column(0, "Argument ID", pa.array(["A2", "A9"]))
    with pytest.raises(data.DataError, match="A9.*not found in the labels file"):
        data.Normalize(cfg, space, labels_table)(orphan)


def test_tokenize_is_ragged_and_pad_batch_pads_to_longest(tiny_bert):
    tok = data.Tokenize(tiny_bert, max_length=8, keep=["id"])
    out = tok({"text": np.array(["hi", "a much longer text than eight tokens surely is"]),
               "text_pair": np.array(["there", "x"]), "id": np.array(["1", "2"])})
    lengths = [len(r) for r in out["input_ids"]]
    assert lengths[0] == 5 and lengths[1] == 8  # [CLS] hi [SEP] there [SEP]; truncated to 8
    assert list(out["token_type_ids"][0]) == [0, 0, 0, 1, 1]
    padded = data.pad_batch(out, pad_token_id=0)
    assert padded["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(padded["attention_mask"][0], [1] * 5 + [0] * 3)
    np.testing.assert_array_equal(padded["input_ids"][0, :5], out["input_ids"][0])
    assert padded["input_ids"][0, 5:].tolist() == [0, 0, 0]


def test_stratified_split_keeps_rare_labels_on_both_sides():
    rng = np.random.default_rng(0)
    labels = (rng.random((1000, 5)) < [0.3, 0.1, 0.05, 0.02, 0.5]).astype(np.float32)
    keys = np.array([f"k{i}" for i in range(1000)])
    val = data.stratified_split(keys, labels, 0.2, seed=0)
    in_val = np.isin(keys, list(val))
    assert in_val.sum() == pytest.approx(200, abs=2)
    # Each label's share in validation tracks its share overall.
    np.testing.assert_allclose(labels[in_val].mean(0), labels.mean(0), atol=0.02)
    assert data.stratified_split(keys, labels, 0.2, seed=0) == val


def test_detect_format_and_missing_files(tmp_path):
    assert data.detect_format(["a/train.tsv"], "auto") == "tsv"
    assert data.detect_format(["s3://b/x.parquet"], "auto") == "parquet"
    assert data.detect_format(["x.jsonl"], "auto") == "jsonl"
    with pytest.raises(data.DataError, match="set data.format"):
        data.detect_format(["x.bin"], "auto")
    with pytest.raises(data.DataError, match="nope.csv: file not found"):
        data.expand_paths([str(tmp_path / "nope.csv")])
    with pytest.raises(data.DataError, match="no file matches"):
        data.expand_paths([str(tmp_path / "*.csv")])


def test_training_reads_string_like_texts_and_names_a_row_that_is_not_utf8():
    cfg = DataConfig(text_column="comment_text", id_columns=["id"], label_columns=JIGSAW)
    space = LabelSpace.from_names(JIGSAW)
    batch = jigsaw_batch(id=pa.array(["a1", "a2", "a3"]).dictionary_encode(),
                         comment_text=pa.array(["you fool", None, "nice"]).cast(pa.string_view()))
    out = data.Normalize(cfg, space)(batch)
    assert out.column("text").to_pylist() == ["you fool", "", "nice"]
    assert out.column("_key").to_pylist() == ["a1", "a2", "a3"]
    binary = jigsaw_batch(comment_text=pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary()))
    with pytest.raises(data.DataError, match=r"train.csv: row with id='a2'.*'comment_text' is "
                                             r"not valid UTF-8"):
        data.Normalize(cfg, space)(binary)


def test_every_file_in_a_folder_is_read_or_refused_by_name(tmp_path):
    for name in ["b.pq", "a.csv", "_SUCCESS", ".a.csv.crc", "sub/c.tsv.gz", "_tmp/x.csv",
                 ".hidden/y.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = data.expand_paths(str(tmp_path))
    assert files == [str(tmp_path / n) for n in ["a.csv", "b.pq", "sub/c.tsv.gz"]]
    assert [data.file_format(f, "auto") for f in files] == ["csv", "parquet", "tsv"]
    (tmp_path / "notes.md").write_bytes(b"")
    with pytest.raises(data.DataError, match=r"notes.md: unknown file type.*set data.format"):
        [data.file_format(f, "auto") for f in data.expand_paths(str(tmp_path))]
    assert data.file_format(str(tmp_path / "notes.md"), "tsv") == "tsv"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(data.DataError, match=r"empty: no input files"):
        data.expand_paths(str(tmp_path / "empty"))
