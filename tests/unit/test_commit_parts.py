"""The commit protocol's pieces without Ray: the output lease, identities and the export swap."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlc_dist import storage
from mlc_dist.scoring.fingerprint import IdSet, file_identity, id_digests, model_id, same_file
from mlc_dist.scoring.lease import LEASE, Lease, LeaseHeld, LeaseLost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_one_lease_per_output_named_when_held_taken_over_when_stale(tmp_path):
    first = Lease(str(tmp_path), timeout_s=60).acquire()
    with pytest.raises(LeaseHeld, match=f"run {first.run_id} on .* \\(pid {os.getpid()}\\)"):
        Lease(str(tmp_path), timeout_s=60).acquire()
    first.release()
    assert not (tmp_path / LEASE).exists()
    second = Lease(str(tmp_path), timeout_s=0.2).acquire()
    second.stop_heartbeat()  # as if its process hung: no more heartbeats
    time.sleep(0.4)
    third = Lease(str(tmp_path), timeout_s=60).acquire()  # stale: taken over
    with pytest.raises(LeaseLost, match=f"lost its lease to {third.run_id}"):
        second.check()
    second.release()  # does not delete the new holder's lease
    third.check()
    third.release()


def test_a_lease_renews_itself_while_its_run_lives(tmp_path):
    lease = Lease(str(tmp_path), timeout_s=0.2).acquire()
    time.sleep(0.6)  # three timeouts: the heartbeat keeps it fresh
    with pytest.raises(LeaseHeld):
        Lease(str(tmp_path), timeout_s=0.2).acquire()
    lease.check()
    lease.release()


def test_id_fingerprint_is_order_independent_and_the_same_in_another_process():
    table = pa.table({"id": ["a", "b", "c", "b"], "n": [1, 2, 3, 2]})
    ids = IdSet()
    ids.add(id_digests(table, ["id", "n"]))
    shuffled = IdSet()
    shuffled.add(id_digests(table.take([3, 1, 0, 2]), ["id", "n"]))
    assert ids.summary() == shuffled.summary()
    assert ids.summary()["ids"] == 4 and ids.summary()["duplicate_ids"] == 1
    code = ("import pyarrow as pa\nfrom mlc_dist.scoring.fingerprint import IdSet, id_digests\n"
            "s = IdSet(); s.add(id_digests(pa.table({'id': ['b', 'c', 'a', 'b'], 'n': [2, 3, 1, 2]"
            "}), ['id', 'n'])); print(s.summary()['ids_fingerprint'])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO, "PYTHONHASHSEED": "123"},
                           check=True)
    assert other.stdout.strip() == ids.summary()["ids_fingerprint"]
    one_less = IdSet()
    one_less.add(id_digests(table.slice(0, 3), ["id", "n"]))
    assert one_less.summary()["ids_fingerprint"] != ids.summary()["ids_fingerprint"]


def test_file_identity_changes_with_content_and_not_without(tmp_path):
    path = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["one", "two"]}), path)
    before = file_identity(path)
    assert same_file(before, file_identity(path))
    stat = os.stat(path)
    pq.write_table(pa.table({"id": ["x", "z"], "text": ["one", "two"]}), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert os.path.getsize(path) == before["size"]
    assert not same_file(before, file_identity(path))
    csv = tmp_path / "b.csv"
    csv.write_text("id,text\n1,a\n")
    ident = file_identity(str(csv))
    csv.write_text("id,text\n1,b\n")
    os.utime(csv, ns=(ident["mtime_ns"], ident["mtime_ns"]))
    assert not same_file(ident, file_identity(str(csv)))


def _export(folder, weights: bytes, tokenizer: str = "{}"):
    os.makedirs(folder, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer_config.json").write_text(tokenizer)
    (folder / storage.CONTENT_FILE).write_text(storage.content_listing(str(folder)))
    return folder


def test_model_id_covers_every_file_and_the_scoring_settings(tmp_path):
    base = model_id(str(_export(tmp_path / "a", b"w")), {"precision": "fp32"})
    assert model_id(str(_export(tmp_path / "b", b"w")), {"precision": "fp32"}) == base
    assert model_id(str(_export(tmp_path / "c", b"w", '{"x": 1}')), {"precision": "fp32"}) != base
    assert model_id(str(_export(tmp_path / "a", b"w")), {"precision": "bf16"}) != base


def test_an_export_is_swapped_in_by_one_rename_and_the_previous_kept(tmp_path):
    dest = tmp_path / "run" / "model"
    dest.parent.mkdir()
    versions = []
    for i in range(3):
        storage.publish_dir(str(_export(tmp_path / f"src{i}", f"w{i}".encode())), str(dest))
        versions.append(os.path.realpath(dest))
        assert os.path.islink(dest) and (dest / "model.safetensors").read_bytes() == \
            f"w{i}".encode()
    assert len(set(versions)) == 3
    left = sorted(p.name for p in dest.parent.iterdir())
    assert left == sorted(["model", os.path.basename(versions[1]), os.path.basename(versions[2])])
