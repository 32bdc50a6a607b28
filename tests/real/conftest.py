"""Every test here goes through napari's plugin discovery."""

import pytest


@pytest.fixture(autouse=True)
def _discover_plugins(napari_plugins):
    """Discovery happens once per session (see ``napari_plugins``)."""
