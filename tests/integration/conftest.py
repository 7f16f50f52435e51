from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # Hooks in a conftest see the whole session's items: mark only this folder's.
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def join_env(ray_cluster):
    """The environment for a subprocess driver that joins this test run's Ray cluster instead of
    booting its own (seconds saved per process; the cluster's CPUs are shared either way)."""
    import os

    address = ray_cluster.get_runtime_context().gcs_address
    return {**os.environ, "RAY_ADDRESS": address}
