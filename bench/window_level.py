"""Benchmark: is napari responsive while the user drags the window/level on a CT? (issue 20)

Opens a synthetic 512x512x300 CT (int16, air -1000 HU, body 40 HU, an organ and a bone),
or ``--file`` (any scan the plugin reads), docks Window presets from the manifest, and
Ctrl + left drags on the canvas for ``--seconds``: a mouse move every ``--interval`` ms along
a figure of eight across half the canvas, as Qt sends them. A 10 ms heartbeat
(``tests/helpers/heartbeat.py``) records how late each tick comes.
The goal: no stall over 100 ms. Without a display, run it under ``xvfb-run`` (Mesa's
software OpenGL then draws the canvas on the CPU).

Prints one JSON object. Usage: ``python bench/window_level.py [--seconds 10] [--file CT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

# The event-loop heartbeat is test and bench tooling (tests/helpers), the headless
# display helpers belong to the demo launcher (scripts): neither ships in the package.
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "helpers"), str(REPO / "scripts")]

PLUGIN = "napari-medai"
SHAPE = (300, 512, 512)


def synthetic_ct() -> np.ndarray:
    """A CT-like volume: air, a body ellipse, an organ and a bone."""
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    organ = ((z - 150) / 80.0) ** 2 + ((y - 230) / 90.0) ** 2 + ((x - 180) / 70.0) ** 2 <= 1
    bone = ((y - 380) / 25.0) ** 2 + ((x - 256) / 25.0) ** 2 <= 1
    ct = np.where(body, 40, -1000) + np.where(organ, 60, 0) + np.where(bone, 1200, 0)
    return ct.astype(np.int16)


def measure(seconds: float, interval_ms: int, path: str | None) -> dict:
    from heartbeat import EventLoopMonitor
    from napari.viewer import Viewer
    from qtpy.QtCore import QEvent, QEventLoop, QPointF, Qt, QTimer
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    viewer = Viewer(show=True)
    # A fixed size: napari restores the last session's window size, and the canvas's pixel
    # count is most of a frame's cost under software OpenGL.
    viewer.window._qt_window.resize(1920, 1080)
    if path:
        viewer.open(path, plugin=PLUGIN)
    else:
        viewer.add_image(synthetic_ct(), name="CT", contrast_limits=(-160, 240))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Window presets")
    canvas = viewer.window._qt_viewer.canvas.native

    def run(ms: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(ms), loop.quit)
        loop.exec()

    def send(kind, point, buttons) -> None:
        button = (
            Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else Qt.MouseButton.LeftButton
        )
        event = QMouseEvent(
            kind, QPointF(*point), button, buttons, Qt.KeyboardModifier.ControlModifier
        )
        QApplication.sendEvent(canvas, event)

    run(1500)  # drawn and laid out, as before a user's first drag
    centre = np.array([canvas.width() / 2, canvas.height() / 2])
    radius = centre / 2
    left = Qt.MouseButton.LeftButton
    moves = 0
    send(QEvent.Type.MouseMove, centre, Qt.MouseButton.NoButton)
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
    with monitor:
        send(QEvent.Type.MouseButtonPress, centre, left)
        while monitor.duration_s < seconds:
            angle = 2 * np.pi * moves * interval_ms / 4000.0  # one figure of eight per 4 s
            send(QEvent.Type.MouseMove, centre + radius * [np.sin(angle), np.sin(2 * angle)], left)
            moves += 1
            run(interval_ms)
        send(QEvent.Type.MouseButtonRelease, centre, Qt.MouseButton.NoButton)
        run(100)
    result = {
        "scan": path or f"synthetic CT {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} int16",
        "canvas_px": [canvas.width(), canvas.height()],
        "moves": moves,
        "move_interval_ms": interval_ms,
        "window_after": widget.values.text(),
        **monitor.summary(),
        "stalls_over_100ms": [
            [round(s.at_s, 2), round(s.ms)] for s in monitor.stalls if s.ms > 100
        ],
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    viewer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=int, default=16, help="ms between mouse moves")
    parser.add_argument("--file", help="a scan to open instead of the synthetic CT")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.interval, args.file)))


if __name__ == "__main__":
    main()
