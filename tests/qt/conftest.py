"""Fixtures for the Qt widget tests."""

from __future__ import annotations

from functools import cache

import pytest

from napari_medai.core.errors import MedaiError


@cache
def _opengl_problem() -> str | None:
    from launch_demo import check_opengl

    try:
        check_opengl()
    except MedaiError as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def _viewer_needs_opengl(request):
    """Fail viewer tests with a clear reason when Qt has no OpenGL (offscreen without X).

    Without this, napari fails deep inside vispy with an AttributeError.
    pytest-xvfb (or xvfb-run) provides the X server that OpenGL needs.
    """
    if "make_napari_viewer" in request.fixturenames:
        request.getfixturevalue("qapp")
        problem = _opengl_problem()
        if problem is not None:
            pytest.fail(f"napari needs OpenGL: {problem}", pytrace=False)


@pytest.fixture
def notifications():
    """Every napari notification dispatched during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(notification) -> None:
        seen.append(notification)

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)
