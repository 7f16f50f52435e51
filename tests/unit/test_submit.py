"""Submission ids of nightly runs, the attempt after a failed one, which token goes where, and
what a submission ships."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlc_dist.config import JobConfigError
from mlc_dist.submit import _claim, auth_headers, entrypoint, submission_id_for


def test_nightly_id_is_the_command_run_and_date():
    assert submission_id_for("score", "jigsaw", "2026-11-29") == "mlc-dist-score-jigsaw-2026-11-29"
    # The same night gives the same id: that is what makes a retry find the first run.
    assert submission_id_for("score", "jigsaw", "2026-11-29") == \
        submission_id_for("score", "jigsaw", "2026-11-29")
    assert submission_id_for("score", "jigsaw", "2026-11-30") != \
        submission_id_for("score", "jigsaw", "2026-11-29")
    # Ray names the job's log file after the id: no slashes or spaces in it.
    assert submission_id_for("score", "team a/run 1", "2026-11-29") == \
        "mlc-dist-score-team-a-run-1-2026-11-29"


def test_nightly_id_rejects_bad_dates_and_other_commands():
    with pytest.raises(JobConfigError, match="YYYY-MM-DD"):
        submission_id_for("score", "x", "29/11/2026")
    with pytest.raises(JobConfigError, match="only --command score"):
        submission_id_for("train", "x", "2026-11-29")


def test_entrypoint_passes_the_date_to_score():
    assert entrypoint("score", "jobs/a.yaml", ["score.batch_size=8"], "2026-11-29") == \
        "python -m mlc_dist.cli score jobs/a.yaml --date 2026-11-29 --set score.batch_size=8"


class _Jobs:
    def __init__(self, **statuses):
        self.statuses = {k.replace("_", "-"): v for k, v in statuses.items()}

    def list_jobs(self):
        return [SimpleNamespace(submission_id=k, status=SimpleNamespace(value=v))
                for k, v in self.statuses.items()] + [
            SimpleNamespace(submission_id=None, status=SimpleNamespace(value="RUNNING"))]


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "SUCCEEDED"])
def test_a_live_or_finished_run_is_reported_not_started_again(status):
    assert tuple(_claim(_Jobs(n=status), "n")) == ("n", status)


def test_a_free_id_is_taken():
    assert tuple(_claim(_Jobs(other="RUNNING"), "n")) == ("n", None)


def test_after_failed_attempts_the_next_number_is_taken():
    assert tuple(_claim(_Jobs(n="FAILED"), "n")) == ("n-attempt2", None)
    assert tuple(_claim(_Jobs(n="FAILED", n_attempt2="STOPPED"), "n")) == ("n-attempt3", None)
    # A retry while attempt 2 runs finds attempt 2.
    assert tuple(_claim(_Jobs(n="FAILED", n_attempt2="RUNNING"), "n")) == ("n-attempt2", "RUNNING")


@pytest.fixture
def token(monkeypatch):
    """Ray's token loader answering "t0ken": the real one is process-wide and cached, and a
    connected driver's gRPC calls use it (tests/integration reads real tokens end to end)."""
    import ray._raylet

    class Loader:
        @staticmethod
        def instance():
            return Loader

        @staticmethod
        def has_token(ignore_auth_mode):
            return ignore_auth_mode

        @staticmethod
        def get_raw_token(ignore_auth_mode):
            assert ignore_auth_mode
            return "t0ken"

    monkeypatch.setattr(ray._raylet, "AuthenticationTokenLoader", Loader)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return "t0ken"


def test_the_token_goes_to_a_head_on_this_machine_only(token, monkeypatch):
    for address in ("http://127.0.0.1:8265", "http://localhost:8275", "http://[::1]:8265"):
        assert auth_headers(address) == {"Authorization": f"Bearer {token}"}
    # Elsewhere only in token mode, which Ray's own client handles.
    assert auth_headers("http://ray-head.example:8265") == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers("http://127.0.0.1:8265") == {}


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
    assert dropped(tmp_path / ".git" / "HEAD")
    assert dropped(tmp_path / "mlc_dist" / "__pycache__" / "a.pyc")
