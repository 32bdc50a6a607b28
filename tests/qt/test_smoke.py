"""GUI acceptance: every declared widget docks, the sample loads, a screenshot is taken.

The widget list comes from the installed manifest, never from this file, so a
widget added to napari.yaml is smoke-tested without touching these tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import reduce
from pathlib import Path

import launch_demo as launch
import numpy as np
import pytest
from imageio.v3 import imread
from launch_demo import has_display, main
from napari.viewer import current_viewer
from npe2 import PluginManager, PluginManifest
from qtpy.QtGui import QGuiApplication

from napari_medai.core.phantom import make_phantom

PLUGIN = "napari-medai"
MANIFEST = PluginManifest.from_distribution(PLUGIN)
COMMANDS = MANIFEST.contributions.commands or []


def assert_not_uniform(image: np.ndarray) -> None:
    assert image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.uint8
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, 4), axis=0)) > 1


@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_every_python_name_imports(command):
    module_name, _, attribute = command.python_name.partition(":")
    module = importlib.import_module(module_name)
    target = reduce(getattr, attribute.split("."), module)
    assert callable(target)


def test_manifest_declares_widgets_and_the_phantom_sample():
    assert MANIFEST.contributions.widgets
    assert "phantom_ct" in [sample.key for sample in MANIFEST.contributions.sample_data]


def test_viewer_docks_every_widget_loads_the_sample_and_screenshots(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    docks = []
    for contribution in manifest.contributions.widgets:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, contribution.display_name)
        assert widget is not None, contribution.display_name
        docks.append(dock)
    qtbot.waitUntil(lambda: all(dock.isVisible() for dock in docks), timeout=5000)

    layers = viewer.open_sample(PLUGIN, "phantom_ct")

    ct, labels = make_phantom()
    kinds = {type(layer).__name__: layer for layer in layers}
    assert set(kinds) == {"Image", "Labels"}
    np.testing.assert_array_equal(np.asarray(kinds["Image"].data), ct.array)
    np.testing.assert_array_equal(np.asarray(kinds["Labels"].data), labels.array)

    assert_not_uniform(viewer.screenshot(canvas_only=False, flash=False))
    if QGuiApplication.platformName() != "offscreen":  # offscreen Qt draws no OpenGL content
        assert_not_uniform(viewer.screenshot(canvas_only=True, flash=False))


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
        ({"DISPLAY": ""}, "linux", False),
        ({}, "darwin", True),
        ({}, "win32", True),
    ],
)
def test_has_display(environ, platform, expected):
    assert has_display(environ, platform) is expected


def require_sample() -> None:
    if importlib.util.find_spec("napari_medai._napari.sample_data") is None:
        pytest.skip("the phantom sample (napari_medai._napari.sample_data) is not there yet")


def test_launcher_screenshot_option(make_napari_viewer, monkeypatch, tmp_path, capsys):
    """The launcher's own steps, on napari's test viewer (a second real Viewer
    in one process would register every plugin's commands twice)."""
    require_sample()
    monkeypatch.setattr(launch, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    shot = tmp_path / "window.png"
    assert main(["--screenshot", str(shot)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"Screenshot saved to {shot}"]
    assert_not_uniform(imread(shot))
    assert current_viewer() is None  # closed again

    # A second run refuses to overwrite it, before opening anything.
    before = shot.read_bytes()
    assert main(["--screenshot", str(shot)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert shot.read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("Xvfb"), reason="Xvfb is not installed")
def test_launcher_without_a_display_explains_and_saves_a_screenshot(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["TMPDIR"] = str(tmp_path)
    require_sample()
    result = subprocess.run(
        [sys.executable, str(Path(launch.__file__))],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("No display (DISPLAY and WAYLAND_DISPLAY are unset)")
    saved = re.search(r"Screenshot saved to (.+\.png)$", result.stdout, re.MULTILINE)
    assert saved is not None, result.stdout
    shot = Path(saved.group(1))
    assert shot.is_relative_to(tmp_path)
    assert_not_uniform(imread(shot))
