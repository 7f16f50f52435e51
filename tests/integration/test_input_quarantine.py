"""Row-level quarantine of CSV input through the nightly job on a real local Ray cluster: a row
with bytes that are not UTF-8 and a row with a field too many go to `_quarantine/` with their
file and line; the file's other rows are scored; every file is read or refused by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from mlc_dist import scoring
from mlc_dist.artifacts import load_export
from mlc_dist.config import validate_job
from mlc_dist.data import DataError
from mlc_dist.labels import LabelSpace
from ..conftest import export_tiny_model

LABELS = LabelSpace.from_names(["toxic", "insult"])
CSV = (b'id,comment_text\n'
       b'a,you are a clown\n'                       # 2
       b'b,"a quoted text\nover two lines"\n'       # 3-4
       b'c,"caf\xe9 latin-1 bytes"\n'               # 5: not UTF-8
       b'd,one field,too many\n'                    # 6
       b'null,NA\n'                                 # 7: null-like strings stay text
       b'e,thanks for the edit\n')                  # 8
GOOD = {"a": "you are a clown", "b": "a quoted text\nover two lines", "null": "NA",
        "e": "thanks for the edit", "p": "a categorical text", "q": "another one"}


@pytest.fixture(scope="module")
def model_dir(tiny_bert, tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("export"), tiny_bert, LABELS,
                             "comment_text")


def test_bad_csv_rows_are_quarantined_with_file_and_line(model_dir, tmp_path, ray_cluster):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "drop.csv").write_bytes(CSV)
    (folder / "empty.csv").write_bytes(b"")  # an empty input, counted: not a failure
    (folder / "_SUCCESS").write_bytes(b"")   # Hadoop/Spark markers are skipped
    # A pandas categorical: dictionary<string> in Parquet, and a `.pq` name.
    frame = pd.DataFrame({"id": ["p", "q"], "comment_text": pd.Categorical(["a categorical text",
                                                                             "another one"])})
    frame.to_parquet(folder / "more.pq")
    out = tmp_path / "out"
    job = validate_job({"run": {"name": "input-test"}, "data": {"id_columns": ["id"]},
                        "score": {"input": str(folder), "output": str(out), "model": model_dir,
                                  "max_quarantine_fraction": 0.5}})  # 2 of 8: over the 0.1 gate
    summary = scoring.run(job)
    assert (summary["parts_committed"], summary["rows_in"], summary["rows_out"],
            summary["rows_quarantined"]) == (3, 8, 6, 2)
    q = pq.read_table(out / "_quarantine" / "part-drop.parquet").to_pydict()
    assert q == {"id": [None, None], "input_file": [str(folder / "drop.csv")] * 2,
                 "input_line": [5, 6], "reason": ["invalid_utf8", "wrong_field_count"]}
    assert pq.read_table(out / "part-empty.parquet").num_rows == 0
    parts = [pq.read_table(out / f"part-{n}.parquet") for n in ("drop", "more")]
    ids = [i for part in parts for i in part.column("id").to_pylist()]
    assert ids == ["a", "b", "null", "e", "p", "q"]
    model, tokenizer, _ = load_export(model_dir)
    with torch.inference_mode():  # the good rows' scores: the texts as written, one at a time
        ref = np.concatenate([torch.sigmoid(model(**tokenizer([GOOD[i]], truncation=True,
                              max_length=64, return_tensors="pt")).logits).numpy() for i in ids])
    got = np.stack([np.concatenate([part.column(f"score_{n}").to_numpy() for part in parts])
                    for n in LABELS.names], axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)

    (folder / "notes.md").write_text("not data")
    with pytest.raises(DataError, match=r"notes.md: unknown file type"):
        scoring.run(validate_job({"run": {"name": "input-test"}, "data": {"id_columns": ["id"]},
                                  "score": {"input": str(folder), "output": str(tmp_path / "o2"),
                                            "model": model_dir}}))
