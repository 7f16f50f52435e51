"""storage.py through file:// URIs: the same pyarrow code path an object store takes, no server."""

import os

import pytest

from mlc_dist import storage


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 1000)
    (folder / "sub" / "tokenizer.json").write_text('{"v": 1}')
    (folder / storage.CONTENT_FILE).write_text(storage.content_listing(str(folder)))
    return folder


def test_local_copy_is_keyed_by_content_and_made_once(export, tmp_path, monkeypatch):
    monkeypatch.setenv("MLC_DIST_CACHE", str(tmp_path / "cache"))
    uri = f"file://{export}"
    first = storage.local_copy(uri)
    assert first.startswith(str(tmp_path / "cache")) and first != str(export)
    assert open(os.path.join(first, "sub", "tokenizer.json")).read() == '{"v": 1}'
    mtime = os.path.getmtime(os.path.join(first, "weights.bin"))
    assert storage.local_copy(uri) == first  # cached: not copied again
    assert os.path.getmtime(os.path.join(first, "weights.bin")) == mtime
    # A new export (new content listing) gets its own copy; the old one is never changed.
    (export / "weights.bin").write_bytes(b"v" * 1000)
    (export / storage.CONTENT_FILE).write_text(storage.content_listing(str(export)))
    second = storage.local_copy(uri)
    assert second != first and open(os.path.join(second, "weights.bin"), "rb").read() == b"v" * 1000
    assert open(os.path.join(first, "weights.bin"), "rb").read() == b"w" * 1000
    assert storage.local_copy(str(export)) == str(export)  # local paths are read in place


def test_a_file_that_differs_from_the_listing_is_refused(export, tmp_path, monkeypatch):
    monkeypatch.setenv("MLC_DIST_CACHE", str(tmp_path / "cache"))
    (export / "weights.bin").write_bytes(b"x" * 1000)  # changed after the listing was written
    with pytest.raises(OSError, match="differ from its content.sha256"):
        storage.local_copy(f"file://{export}")
    assert not [n for n in os.listdir(tmp_path / "cache") if not n.startswith(".")]


def test_upload_move_and_json_round_trip(export, tmp_path):
    dest = f"file://{tmp_path}/out/model"
    storage.upload_dir(str(export), dest)
    assert storage.list_files(dest) == [storage.CONTENT_FILE, "sub/tokenizer.json", "weights.bin"]
    storage.write_json(storage.join(dest, "x.json"), {"a": [1, 2]})
    assert storage.read_json(storage.join(dest, "x.json")) == {"a": [1, 2]}
    storage.move_dir(dest, f"file://{tmp_path}/moved")
    assert not storage.exists(dest) and storage.is_file(f"file://{tmp_path}/moved/x.json")


def test_demo_data_goes_to_an_object_store_uri(tmp_path):
    from mlc_dist.demo import write_demo_kind

    paths = write_demo_kind(f"file://{tmp_path}/bucket/demo", "text", rows=40)
    assert paths == {"train": f"file://{tmp_path}/bucket/demo/train.csv",
                     "score": f"file://{tmp_path}/bucket/demo/score.parquet"}
    assert storage.list_files(f"file://{tmp_path}/bucket/demo") == ["score.parquet", "train.csv"]
    assert len(storage.read_bytes(paths["train"]).splitlines()) == 41  # header + 40 rows
