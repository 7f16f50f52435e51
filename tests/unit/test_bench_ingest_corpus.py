"""bench ingest's generated corpus: the Jigsaw layout, deterministic, every row once over the
files, written once per (rows, files, recipe) and reused."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from mlc_dist.bench_ingest import JIGSAW_LABELS, write_corpus


def _read(folder: str):
    files = sorted(os.listdir(folder))
    return files, pq.read_table([os.path.join(folder, f) for f in files]).to_pydict()


def test_jigsaw_columns_and_every_row_exactly_once_over_the_files(tmp_path):
    pool = ["one text", "another, longer text", "a third"]
    folder, seconds = write_corpus(301, 4, pool, "unit", root=str(tmp_path))
    files, table = _read(folder)
    assert files == [f"part-{i:05d}.parquet" for i in range(4)] and seconds >= 0
    assert list(table) == ["id", "comment_text", *JIGSAW_LABELS]
    assert table["id"] == [f"{i:09d}" for i in range(301)]
    assert [pq.read_metadata(os.path.join(folder, f)).num_rows for f in files] == [75, 75, 75, 76]
    assert set(table["comment_text"]) == set(pool)  # 301 draws from 3 texts reach them all
    for name in JIGSAW_LABELS:
        assert set(table[name]) <= {0, 1}
    assert sum(table["toxic"]) > 0 and sum(table["toxic"]) < 301


def test_the_same_rows_every_time_and_a_smaller_corpus_is_a_prefix(tmp_path):
    pool = [f"text {i}" for i in range(50)]
    _, first = _read(write_corpus(200, 3, pool, "unit", root=str(tmp_path / "a"))[0])
    _, again = _read(write_corpus(200, 3, pool, "unit", root=str(tmp_path / "b"))[0])
    _, prefix = _read(write_corpus(20, 2, pool, "unit", root=str(tmp_path / "c"))[0])
    assert first == again
    assert {k: v[:20] for k, v in first.items()} == prefix
    _, other_seed = _read(write_corpus(200, 3, pool, "unit", seed=1, root=str(tmp_path / "d"))[0])
    assert other_seed["comment_text"] != first["comment_text"]


def test_a_second_call_reuses_the_written_folder(tmp_path):
    pool = ["x", "y"]
    folder, _ = write_corpus(100, 2, pool, "unit", root=str(tmp_path))
    stamp = os.path.getmtime(os.path.join(folder, "part-00000.parquet"))
    again, seconds = write_corpus(100, 2, pool, "unit", root=str(tmp_path))
    assert again == folder and seconds is None  # None: nothing generated
    assert os.path.getmtime(os.path.join(folder, "part-00000.parquet")) == stamp
    assert os.listdir(tmp_path / "bench-ingest") == [os.path.basename(folder)]  # no temp left
    other, _ = write_corpus(100, 3, pool, "unit", root=str(tmp_path))
    assert other != folder  # keyed by files (and rows, recipe) too
