"""pytest plugin providing ``fake_hub``: a running in-memory Hub (see tests/hub_server.py).

Register with ``pytest_plugins = ["tests.conftest_hub"]`` in the top-level conftest.py, or import
the fixture into a test module.
"""

from __future__ import annotations

import pytest

from tests.hub_server import FakeHub


@pytest.fixture
def fake_hub():
    """A fresh FakeHub per test; ``fake_hub.url`` goes into ``run_with_hub``."""
    with FakeHub() as hub:
        yield hub
