"""Benchmark: is napari responsive while scrolling slices in the Orthogonal views dock? (issue 20)

Opens a synthetic 512x512x300 CT (0.8 x 0.8 x 1.5 mm, int16) with a label map, or a 4D series
(``--4d``: 4 frames of 300x512x512), docks Orthogonal views from the manifest, and steps the
coronal view's slice every ``--interval`` ms for ``--seconds`` (the main view's crosshair and the
sagittal view follow), then paints a stroke into the label map in the sagittal view. A 10 ms
heartbeat (``tests/helpers/heartbeat.py``) records how late each tick
comes. The goal: no stall over 100 ms. Without a display, run it under ``xvfb-run`` (Mesa's
software OpenGL then draws all three canvases on the CPU).

``--no-dock`` measures the floor: napari alone, scrolling and painting the same planes in its
one canvas, so what the dock adds can be told from what napari and software OpenGL cost.

Prints one JSON object. Usage: ``python bench/ortho_views.py [--seconds 10] [--4d] [--no-dock]``.
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
SPACING = (1.5, 0.8, 0.8)


def synthetic_scan(frames: int):
    """A CT-like volume (a body ellipse with an organ) and its label map, on a flipped grid."""
    from napari_medai.core.geometry import Geometry
    from napari_medai.core.volume import LabelMap, Volume

    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    organ = ((z - 150) / 80.0) ** 2 + ((y - 230) / 90.0) ** 2 + ((x - 180) / 70.0) ** 2 <= 1
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    ct = np.where(body, 40, -1000).astype(np.int16) + np.where(organ, 60, 0).astype(np.int16)
    labels = organ.astype(np.uint8)
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0), np.diag([1.0, -1.0, -1.0]))
    if frames > 1:
        ct = np.stack([ct] * frames)
    image = Volume(ct, geometry, {"modality": "CT", "name": "CT"})
    return image, LabelMap(labels, geometry, {"name": "organ"}, {1: "organ"})


def measure(seconds: float, interval_ms: int, frames: int, dock: bool = True) -> dict:
    from heartbeat import EventLoopMonitor
    from napari.layers import Layer
    from napari.viewer import Viewer
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_medai._napari.layers import image_layer_data, labels_layer_data

    image, label_map = synthetic_scan(frames)
    viewer = Viewer(title="napari-medai orthogonal views bench")
    viewer.window._qt_window.resize(1920, 1080)
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    data, kwargs, _kind = labels_layer_data(label_map, "organ")
    if frames > 1:
        spatial = image_layer_data(image)[1]
        data = np.stack([data] * frames)
        kwargs.update({key: spatial[key] for key in ("affine", "units", "axis_labels")})
        kwargs.pop("metadata")
    labels = viewer.add_labels(data, **{k: v for k, v in kwargs.items() if k != "features"})
    if dock:
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Orthogonal views")
        coronal = widget.side_viewers[widget.link.planes.index("coronal")]
        sagittal = widget.side_viewers[widget.link.planes.index("sagittal")]
        copy = widget.link.copies(labels)[widget.link.planes.index("sagittal")]
    else:  # the floor: napari alone, its one canvas showing each plane in turn
        from napari_medai._napari.ortho import plane_order

        viewer.dims.order = plane_order(viewer.dims.ndim, "coronal")
        coronal = sagittal = viewer
        copy = labels

    def run(ms: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(round(ms), loop.quit)
        loop.exec()

    run(2000)  # shown and laid out, as a user would see it before scrolling
    axis = coronal.dims.order[-3]
    steps = coronal.dims.nsteps[axis]
    position = [steps // 4]

    def scroll() -> None:
        position[0] = steps // 4 + (position[0] + 3 - steps // 4) % (steps // 2)
        coronal.dims.set_current_step(axis, position[0])

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(scroll)
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
    monitor.start()
    timer.start()
    run(seconds * 1000)
    timer.stop()
    monitor.stop()
    scrolling = {**monitor.summary(), "slices_shown": round(seconds * 1000 / interval_ms)}

    if not dock:
        viewer.dims.order = plane_order(viewer.dims.ndim, "sagittal")
        run(1000)
    # A stroke in the sagittal view: one voxel row painted per 20 ms, as a mouse drag paints.
    copy.mode = "paint"
    copy.selected_label = 2
    rows = iter(range(100, 400, 3))
    column = int(round(labels.world_to_data(sagittal.dims.point)[-1]))

    def paint() -> None:
        row = next(rows, None)
        if row is not None:
            index = (*labels.world_to_data(labels.data_to_world(np.zeros(labels.ndim)))[:-3],)
            lead = tuple(int(i) for i in index)
            copy.data_setitem(
                (
                    *[np.array([i]) for i in lead],
                    np.array([150]),
                    np.array([row]),
                    np.array([column]),
                ),
                2,
            )

    painter = QTimer()
    painter.setInterval(20)
    painter.timeout.connect(paint)
    monitor.start()
    painter.start()
    run(2000)
    painter.stop()
    monitor.stop()
    painting = monitor.summary()
    main_canvas = viewer.window._qt_viewer.canvas.native
    result = {
        "orthogonal_views_dock": dock,
        "main_canvas_px": [main_canvas.width(), main_canvas.height()],
        "shape": list(data.shape),
        "spacing_mm": list(SPACING),
        "scrolling_coronal": scrolling,
        "painting_sagittal": painting,
        "painted_voxels": int(np.count_nonzero(labels.data == 2)),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    viewer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=int, default=50, help="ms between slice steps")
    parser.add_argument("--4d", dest="frames", action="store_const", const=4, default=1)
    parser.add_argument(
        "--no-dock",
        dest="dock",
        action="store_false",
        help="the floor: napari alone scrolls and paints the same planes in its one canvas",
    )
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.interval, args.frames, args.dock)))


if __name__ == "__main__":
    main()
