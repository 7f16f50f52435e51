"""One multi-node cluster for this folder: cluster/local/up.sh on free ports and its own state
folder, down.sh after its last test whatever happened. Every test here is marked `cluster`."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SCRIPTS = REPO / "cluster" / "local"
#: A developer's shell may carry another cluster's settings (up.sh's exports): never ours.
CLIENT_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
               "RAY_AUTH_TOKEN_PATH", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "AWS_DEFAULT_REGION", "AWS_REGION", "MLC_DIST_BUCKET", "MLC_DIST_CLUSTER_DIR")


def pytest_collection_modifyitems(items):
    # Hooks in a conftest see the whole session's items: mark only this folder's.
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.cluster)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))  # Ray's gRPC servers listen on every interface
            return True
        except OSError:
            return False


def _free_ports() -> dict:
    """Settings for up.sh: four ports and a block of 30 for the nodes, all free now."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 30000, 10)
        singles = [base + 30 + k for k in range(4)]
        if all(_free(p) for p in range(base, base + 34)):
            return {"MLC_DIST_NODE_PORT_BASE": str(base),
                    **dict(zip(("MLC_DIST_RAY_PORT", "MLC_DIST_DASHBOARD_PORT",
                                "MLC_DIST_RAY_CLIENT_PORT", "MLC_DIST_S3_PORT"),
                               map(str, singles)))}


@dataclass
class LocalCluster:
    """What up.sh exported (`env`), its node names, and the node-loss drill."""

    env: dict
    nodes: list[str]
    base_env: dict

    def client_env(self, **extra) -> dict:
        """A shell after `eval "$(up.sh)"`: the environment a client or driver runs in."""
        return {**self.base_env, **self.env, "PYTHONPATH": str(REPO), **extra}

    def _node_sh(self, *args) -> str:
        done = subprocess.run(["bash", str(SCRIPTS / "node.sh"), *args],
                              env=self.client_env(MLC_DIST_PYTHON=sys.executable),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def kill(self, node: str) -> None:
        """SIGKILL every process of a worker node, as if the machine were lost."""
        self._node_sh("kill", node)

    def start(self, node: str) -> str:
        """Start a killed worker node again; returns its new node id."""
        return self._node_sh("start", node)


# Package scope: down as soon as this folder is done, not idling through the other tiers.
@pytest.fixture(scope="package")
def cluster():
    state_dir = tempfile.mkdtemp(prefix="/tmp/mlcc_")  # short: Ray's unix sockets live under it
    base_env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    env = {**base_env, **_free_ports(), "MLC_DIST_CLUSTER_DIR": state_dir,
           "MLC_DIST_PYTHON": sys.executable}
    try:
        up = subprocess.run(["bash", str(SCRIPTS / "up.sh")], env=env, capture_output=True,
                            text=True, timeout=300)
        assert up.returncode == 0, up.stderr[-4000:]
        exported = {}
        for line in up.stdout.splitlines():
            # up.sh's stdout is `export KEY=VALUE` lines only: the contract of eval "$(up.sh)".
            word, assignment = shlex.split(line)
            assert word == "export", line
            key, value = assignment.split("=", 1)
            exported[key] = value
        yield LocalCluster(exported, ["head", "worker1", "worker2"], base_env)
    finally:
        subprocess.run(["bash", str(SCRIPTS / "down.sh")], env=env, timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)
