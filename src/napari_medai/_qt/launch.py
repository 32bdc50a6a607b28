"""Open napari with every napari-medai widget docked and a scan loaded.

``python -m napari_medai._qt.launch [PATH] [--screenshot PNG]``

Without PATH the synthetic phantom CT sample is loaded. With ``--screenshot``
the window is saved as a PNG and the program exits instead of running the
GUI. Without a display (Linux, no ``DISPLAY``/``WAYLAND_DISPLAY``, no
``QT_QPA_PLATFORM``) it says so and does the same headless, on a private Xvfb
X server when one is installed, else on Qt's offscreen platform.

This module is a program: it talks to the user on stdout/stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from napari.qt import get_qapp, run
from napari.utils.io import imsave
from napari.viewer import Viewer
from npe2 import PluginManager
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QApplication

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write, check_can_write

PLUGIN = "napari-medai"
SAMPLE = "phantom_ct"
#: Window size for screenshots: room for the canvas and the docked widgets.
SCREENSHOT_SIZE = (1400, 900)


def _say(message: str, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def has_display(environ: dict[str, str] | None = None, platform: str = sys.platform) -> bool:
    """Whether Qt can open windows: always off Linux; on Linux given a display or platform."""
    environ = os.environ if environ is None else environ
    if not platform.startswith("linux"):
        return True
    return any(environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


@contextlib.contextmanager
def headless_display() -> Iterator[None]:
    """Give Qt somewhere to draw without a screen: Xvfb if installed, else offscreen.

    napari draws its canvas with OpenGL, which Qt's offscreen platform only
    offers on top of an X server, so a private Xvfb server comes first.
    Started by hand because Xvfb itself picks a free display (``-displayfd``);
    a wrapper library would add nothing here.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        yield
        return
    read_end, write_end = os.pipe()
    # "-terminate 10": the server exits 10 s after its last client leaves, so it
    # outlives the xcb probe and ends by itself after this process has exited.
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "1600x1000x24", "-terminate", "10"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        number = pipe.readline().strip()
    try:
        if not number:
            raise MedaiError("Xvfb did not start, so there is no display to draw on")
        os.environ["DISPLAY"] = f":{number}"
        if not _xcb_loads():
            _say(
                "Qt's X11 platform plugin cannot load (missing libxcb-* system libraries); "
                "drawing offscreen instead, where the image canvas stays black",
                error=True,
            )
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        yield
    finally:
        # Stopping the server under a live QApplication kills the process (XIO error).
        if QApplication.instance() is None:
            server.terminate()
            server.wait(timeout=10)


def _xcb_loads() -> bool:
    """Whether Qt's X11 (xcb) platform starts; probed in a child, as a failure aborts."""
    probe = "from qtpy.QtWidgets import QApplication; QApplication(['probe'])"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "QT_QPA_PLATFORM": "xcb"},
        capture_output=True,
        timeout=120,
    )
    return result.returncode == 0


def check_opengl() -> None:
    """Raise a clear error when Qt cannot make an OpenGL context (napari needs one)."""
    surface = QOffscreenSurface()
    surface.create()
    context = QOpenGLContext()
    if not (context.create() and context.makeCurrent(surface)):
        raise MedaiError(
            "Qt cannot create an OpenGL context here, which napari needs to draw; "
            "install Xvfb (apt-get install xvfb) or run with a display"
        )
    context.doneCurrent()


def open_viewer(path: str | None = None) -> Viewer:
    """A napari viewer with every widget of the plugin docked and a scan loaded."""
    get_qapp()
    check_opengl()
    viewer = Viewer(title="napari-medai")
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    for widget in manifest.contributions.widgets or []:
        viewer.window.add_plugin_dock_widget(PLUGIN, widget.display_name)
    if path is None:
        viewer.open_sample(PLUGIN, SAMPLE)
    else:
        viewer.open(path, plugin=PLUGIN)
    return viewer


def save_screenshot(viewer: Viewer, path: Path) -> Path:
    """Save the whole window (canvas and docks) as a PNG, atomically, never overwriting."""
    viewer.window.resize(*SCREENSHOT_SIZE)
    QApplication.processEvents()
    viewer.reset_view()  # fit the scan into the canvas the docks leave
    image = viewer.screenshot(canvas_only=False, flash=False)
    return atomic_write(path, lambda tmp: imsave(str(tmp), image))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m napari_medai._qt.launch",
        description="Open napari with the napari-medai widgets and a scan "
        "(the synthetic phantom CT unless PATH is given).",
    )
    parser.add_argument("path", nargs="?", help="a scan file or DICOM folder to open")
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="save a screenshot of the window to PNG and exit instead of running the GUI",
    )
    return parser.parse_args(argv)


def _run(path: str | None, screenshot: Path | None) -> int:
    viewer = open_viewer(path)
    if screenshot is None:
        run()
        return 0
    saved = save_screenshot(viewer, screenshot)
    viewer.close()
    _say(f"Screenshot saved to {saved}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parse(argv)
    try:
        if args.screenshot is not None:
            check_can_write(args.screenshot, overwrite=False)
        if has_display():
            return _run(args.path, args.screenshot)
        screenshot = args.screenshot
        if screenshot is None:
            screenshot = Path(tempfile.mkdtemp(prefix="napari-medai-")) / "screenshot.png"
        where = "a private Xvfb server" if shutil.which("Xvfb") else "Qt's offscreen platform"
        _say(
            f"No display (DISPLAY and WAYLAND_DISPLAY are unset): running headless on {where} "
            "and saving a screenshot instead of opening a window."
        )
        with headless_display():
            return _run(args.path, screenshot)
    except MedaiError as exc:
        _say(f"napari-medai: {exc}", error=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
