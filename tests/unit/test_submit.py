"""What a submission ships."""

from __future__ import annotations

import shutil
from pathlib import Path


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
