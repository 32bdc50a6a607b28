"""Open napari with every napari-medai widget docked and a scan loaded.

``python scripts/launch_demo.py [PATH] [--screenshot PNG] [--segment]``

Without PATH the synthetic phantom CT sample is loaded; with ``--demo-model``
a small liver model for it is trained once into the user's model folder, in
the worker process while the window is already up (the Segment dock says how
far it is, then offers the model), so the Segment dock gets a model that fits
the scan (``scripts/demo`` asks for it). ``--segment`` runs that dock once before
showing. At start it activates the plugin, which makes napari-medai napari's
reader for medical files and DICOM folders (see ``_napari/reader_choice.py``),
so opening a scan from the demo never asks "Choose reader". With
``--screenshot`` the window is saved as a PNG and the program exits instead of
running the GUI. Without a display (Linux, no
``DISPLAY``/``WAYLAND_DISPLAY``, no ``QT_QPA_PLATFORM``) it says so and does
the same headless, on a private Xvfb X server when one is installed, else on
Qt's offscreen platform.

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
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt import get_qapp, run
from napari.utils.io import imsave
from napari.viewer import Viewer
from npe2 import PluginManager
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QApplication, QWidget

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write, check_can_write

PLUGIN = "napari-medai"
SAMPLE = "phantom_ct"
#: The dock shown in front of those sharing its tab.
FRONT_DOCK = "Train"
#: The docks the demo opens: the annotate-train-segment loop and its neighbours. The
#: others are one click away in Plugins > napari-medai (``--all-docks`` opens them too).
DEMO_DOCKS = ("Segment", "Train", "Prompt", "Segment list", "Window presets", "Export")
#: Folder name of the demo model trained on the phantom (in the user's model folder).
DEMO_MODEL = "phantom-liver-demo"
#: Steps of the demo model: on the phantom's liver, 150 steps reach a validation
#: Dice of 0.99 (measured: 176 s on a 2-core machine under load 10; far less idle).
DEMO_STEPS = 150
#: Window size for screenshots: room for the canvas and the docked widgets.
SCREENSHOT_SIZE = (1600, 1000)


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
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "1920x1200x24", "-terminate", "10"],
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


def demo_model_folder() -> Path:
    """Where the phantom's demo liver model lives (the user's model folder)."""
    from napari_medai.core.models.registry import user_model_dir

    return user_model_dir() / DEMO_MODEL


def demo_training(scratch: Path) -> tuple[list, Any]:
    """The phantom's liver and the fixed training that makes the demo model.

    Trained on the phantom's own liver label (every voxel annotated) with a
    fixed seed and step count, so the Segment dock has a CT model to offer for
    the sample, the same on every machine.
    """
    from napari_medai.core.phantom import make_phantom
    from napari_medai.core.training.config import TrainConfig

    volume, organs = make_phantom()
    liver = replace(
        organs,
        array=(organs.array == 1).astype(np.uint8),
        label_names={0: "background", 1: "liver"},
    )
    config = TrainConfig(
        out_dir=demo_model_folder(),
        max_time_s=None,
        max_iters=DEMO_STEPS,
        seed=0,
        dense=True,
        name="phantom liver (demo)",
        checkpoint_dir=scratch / "checkpoints",
        validation_every_s=float("inf"),
    )
    return [(volume, liver)], config


def train_demo_model_in_background(segment: Any) -> Any:
    """Train the demo model in the worker process while napari runs; returns the thread worker.

    The Segment dock's status line shows the steps, then its model list is
    refreshed and picks the new model.
    """
    from napari.qt.threading import create_worker

    from napari_medai.core import catalogue

    scratch = Path(tempfile.mkdtemp(prefix="napari-medai-demo-"))
    pairs, config = demo_training(scratch)

    def shown(event: Any) -> None:
        step = f" ({event.fraction:.0%})" if event.fraction is not None else ""
        segment.status.setText(f"Training the demo liver model for the phantom{step}...")

    def ready(_result: Any) -> None:
        segment.refresh_models()
        segment.status.setText("The demo liver model is ready: pick the scan and press Run.")

    def failed(error: Exception) -> None:
        segment.status.setText(f"The demo model could not be trained: {error}")

    def training() -> Any:  # a generator function, which napari runs as a GeneratorWorker
        return (yield from catalogue.TRAIN_SEGMENTATION(pairs, config))

    worker = create_worker(training)
    worker.yielded.connect(shown)
    worker.returned.connect(ready)
    worker.errored.connect(failed)
    worker.finished.connect(lambda: shutil.rmtree(scratch, ignore_errors=True))
    segment.status.setText("Training the demo liver model for the phantom...")
    worker.start()
    return worker


def wait_for(worker: Any, timeout_s: float = 600.0) -> None:
    """Run the event loop until ``worker`` has finished (for screenshots and --segment).

    Its ``finished`` signal, not ``is_running``: a worker just started is not
    running yet until the thread pool picks it up.
    """
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    deadline = time.monotonic() + timeout_s
    while not finished and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()  # the returned handler: the model list picks the model


def open_viewer(
    path: str | None = None, demo_model: bool = False, docks: tuple[str, ...] | None = DEMO_DOCKS
) -> tuple[Viewer, dict[str, Any]]:
    """A napari viewer with every widget of the plugin docked and a scan loaded.

    ``docks`` names the docks to open (None: every dock of the plugin).
    ``demo_model`` starts training the phantom's demo model in the background
    when the phantom is shown and the model is missing (its thread worker is
    ``widgets["demo training"]``). Returns the viewer and the docked widgets by
    display name.
    """
    get_qapp()
    check_opengl()
    viewer = Viewer(title="napari-medai")
    plugins = PluginManager.instance()
    # napari activates a plugin only when one of its contributions is first used,
    # and npe2 has no start-up activation; activating here runs our on_activate
    # (napari-medai becomes the reader for medical files and DICOM folders) before
    # anything is opened, so the demo never asks "Choose reader". After the viewer
    # exists, so its notification about the preferences shows in the window.
    plugins.activate(PLUGIN)
    manifest = plugins.get_manifest(PLUGIN)
    names = [widget.display_name for widget in manifest.contributions.widgets or []]
    widgets, opened = {}, {}
    for name in names if docks is None else [name for name in names if name in docks]:
        opened[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    # Docks other than Segment and Train share a tab with Train, leaving the
    # canvas room on a laptop screen; Train stays in front, Segment below it
    # takes the height left; every dock scrolls inside itself.
    front, segment = opened.get(FRONT_DOCK), opened.get("Segment")
    if front is not None:
        window = front.parentWidget()
        if segment is not None:
            window.splitDockWidget(front, segment, Qt.Orientation.Vertical)
        for name, dock in opened.items():
            if name not in (FRONT_DOCK, "Segment"):
                window.tabifyDockWidget(front, dock)
        QApplication.processEvents()
        front.raise_()
    if path is None:
        viewer.open_sample(PLUGIN, SAMPLE)
    else:
        viewer.open(path, plugin=PLUGIN)
    segment = widgets.get("Segment")
    missing = not (demo_model_folder() / "card.json").is_file()
    if path is None and demo_model and segment is not None and missing:
        widgets["demo training"] = train_demo_model_in_background(segment)
    return viewer, widgets


def run_segment(widget: Any, timeout_s: float = 300.0) -> None:
    """Click the Segment dock's Run and wait for the result (for screenshots)."""
    widget.run()
    deadline = time.monotonic() + timeout_s
    while widget.runner.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)


def save_screenshot(viewer: Viewer, path: Path) -> Path:
    """Save the whole window (canvas and docks) as a PNG, atomically, never overwriting.

    Notification pop-ups (napari's own start-up warnings) are closed first, so
    they do not cover the scan.
    """
    for popup in viewer.window._qt_window.findChildren(QWidget):
        if type(popup).__name__ == "NapariQtNotification":
            popup.close()
    viewer.window.resize(*SCREENSHOT_SIZE)
    QApplication.processEvents()
    viewer.reset_view()  # fit the scan into the canvas the docks leave
    image = viewer.screenshot(canvas_only=False, flash=False)
    return atomic_write(path, lambda tmp: imsave(str(tmp), image))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Open napari with the napari-medai widgets and a scan "
        "(the synthetic phantom CT unless PATH is given).",
    )
    parser.add_argument("path", nargs="?", help="a scan file or DICOM folder to open")
    parser.add_argument(
        "--demo-model",
        action="store_true",
        help="with the phantom, train its small liver model once if missing (in the background)",
    )
    parser.add_argument(
        "--all-docks",
        action="store_true",
        help=f"open every dock of the plugin, not only {', '.join(DEMO_DOCKS)}",
    )
    parser.add_argument(
        "--segment",
        action="store_true",
        help="run the Segment dock once (with the model it picks) before showing",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="save a screenshot of the window to PNG and exit instead of running the GUI",
    )
    return parser.parse_args(argv)


def _run(args: argparse.Namespace, screenshot: Path | None) -> int:
    viewer, widgets = open_viewer(
        args.path, args.demo_model, None if args.all_docks else DEMO_DOCKS
    )
    if "demo training" in widgets and (args.segment or screenshot is not None):
        wait_for(widgets["demo training"])
    if args.segment:
        run_segment(widgets["Segment"])
    if screenshot is None:
        # Once the window is up at its final size, fit the scan into the canvas the docks leave.
        QTimer.singleShot(0, viewer.reset_view)
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
            return _run(args, args.screenshot)
        screenshot = args.screenshot
        if screenshot is None:
            screenshot = Path(tempfile.mkdtemp(prefix="napari-medai-")) / "screenshot.png"
        where = "a private Xvfb server" if shutil.which("Xvfb") else "Qt's offscreen platform"
        _say(
            f"No display (DISPLAY and WAYLAND_DISPLAY are unset): running headless on {where} "
            "and saving a screenshot instead of opening a window."
        )
        with headless_display():
            return _run(args, screenshot)
    except MedaiError as exc:
        _say(f"napari-medai: {exc}", error=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
