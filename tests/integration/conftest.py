from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # Hooks in a conftest see the whole session's items: mark only this folder's.
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
