"""What a submission ships, and which token goes where."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlc_dist.submit import auth_headers


def test_the_shipped_project_keeps_packages_named_like_excluded_folders(tmp_path):
    from mlc_dist.submit import REPO, _stage

    outside = tmp_path / "job.yaml"
    outside.write_text((REPO / "jobs" / "quickstart.yaml").read_text())
    work, shipped, tmp = _stage(outside)
    try:
        assert (Path(work) / "mlc_dist" / "data" / "__init__.py").is_file()
        assert (Path(work) / shipped).is_file()
        assert not (Path(work) / ".git").exists() and not (Path(work) / "data").exists()
    finally:
        shutil.rmtree(tmp)


def test_ray_reads_the_excludes_the_same_way(tmp_path):
    # Ray's own matcher for runtime_env excludes (what the cluster unpacks).
    from ray._private.runtime_env.packaging import _get_excludes

    from mlc_dist.submit import EXCLUDES

    dropped = _get_excludes(tmp_path, EXCLUDES)
    assert not dropped(tmp_path / "mlc_dist" / "data" / "read.py")
    assert dropped(tmp_path / "data" / "train.csv") and dropped(tmp_path / "runs" / "a" / "x.pt")
    assert dropped(tmp_path / ".git" / "HEAD") and dropped(tmp_path / "mlc_dist" / "__pycache__" / "a.pyc")


@pytest.fixture
def token(monkeypatch):
    from ray._raylet import AuthenticationTokenLoader

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")
    AuthenticationTokenLoader.instance().reset_cache()  # Ray caches the first token it reads
    yield "t0ken"
    monkeypatch.undo()
    AuthenticationTokenLoader.instance().reset_cache()


def test_the_token_goes_to_a_head_on_this_machine_only(token, monkeypatch):
    for address in ("http://127.0.0.1:8265", "http://localhost:8275", "http://[::1]:8265"):
        assert auth_headers(address) == {"Authorization": f"Bearer {token}"}
    # Elsewhere only in token mode, which Ray's own client handles.
    assert auth_headers("http://ray-head.example:8265") == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers("http://127.0.0.1:8265") == {}
