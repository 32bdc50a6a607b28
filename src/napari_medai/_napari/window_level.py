"""Window/level by dragging the mouse on the canvas, as in every PACS (napari#3388), without Qt.

A drag changes the display window of the image(s) it acts on: horizontal =
width (right widens), vertical = level (down raises it, so the image darkens,
as in 3D Slicer), in the image's own units (HU for CT). Speed: a drag across
the whole canvas changes either by the image's value range, measured in screen
pixels, so it is the same at any zoom, in any slicing orientation and in 3D.
The width stays between :data:`MIN_WIDTH_FRACTION` of the range and the range,
the level within the data's range (a preset outside these bounds is kept as the
bound until the drag passes back inside it, so a drag never jumps).

Two ways to drag, both only while the active layer (if any) is in pan/zoom
mode, so a Labels brush, fill or erase never also changes the window:

- Ctrl + left drag, always (napari gives it no meaning on the canvas; a plain
  left drag still pans);
- a plain left drag while the window/level mouse mode is on
  (:attr:`WindowLevelDrag.enabled`), instead of panning.

A drag takes the press from the camera (the view does not pan). The Window
presets dock shows the values, live (:meth:`WindowLevelDrag.describe`). Not
napari's status bar: napari rewrites it from the cursor after every move. Nor
the canvas's text overlay: its first show builds vispy's font atlas, a 0.5 s
stall on software OpenGL.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image
from napari.utils.events import EmitterGroup, Event

from napari_medai._napari.modality import layer_modality
from napari_medai.core.windows import value_range

#: Modifier that starts a window/level drag whether or not the mouse mode is on.
DRAG_MODIFIER = "Control"
#: The narrowest window a drag reaches, as a fraction of the image's value range.
MIN_WIDTH_FRACTION = 1e-3
LEFT_BUTTON = 1


@dataclass(frozen=True)
class Window:
    """A display window: ``level`` (centre) and ``width``, in the image's units."""

    level: float
    width: float

    @classmethod
    def from_limits(cls, limits: Any) -> Window:
        low, high = (float(value) for value in limits)
        return cls((low + high) / 2.0, high - low)

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) contrast limits."""
        return (self.level - self.width / 2.0, self.level + self.width / 2.0)


def dragged_window(
    start: Window,
    shift_px: tuple[float, float],
    canvas_px: tuple[float, float],
    data_range: tuple[float, float],
) -> Window:
    """The window after a drag of ``shift_px`` (x right, y down) on a ``canvas_px`` (h, w) canvas.

    A drag across the canvas changes the width (horizontally) or the level
    (vertically) by the span of ``data_range``; the result is clamped as the
    module docstring says.
    """
    low, high = data_range
    span = high - low
    height, width = (max(float(n), 1.0) for n in canvas_px)
    level = start.level + shift_px[1] / height * span
    window = start.width + shift_px[0] / width * span
    level = float(np.clip(level, min(low, start.level), max(high, start.level)))
    narrowest = span * MIN_WIDTH_FRACTION
    window = float(np.clip(window, min(narrowest, start.width), max(span, start.width)))
    return Window(level, window)


def is_greyscale(layer: object) -> bool:
    """Whether ``layer`` is an image a display window applies to (not RGB)."""
    return isinstance(layer, Image) and not layer.rgb


def window_targets(viewer: ViewerModel) -> list[Image]:
    """The selected greyscale images, else the viewer's only one, else none.

    With no image selected (say the user paints on a Labels layer) a window
    still reaches the scan, but never guesses between several images.
    """
    selected = [layer for layer in viewer.layers.selection if is_greyscale(layer)]
    if selected:
        return selected
    images = [layer for layer in viewer.layers if is_greyscale(layer)]
    return images if len(images) == 1 else []


def layer_array(layer: Image) -> Any:
    """The array to sample: the coarsest level of a multiscale image."""
    return layer.data[-1] if layer.multiscale else layer.data


def unit_of(layer: Image) -> str:
    """ " HU" for CT, else "" (MR and unknown images have no fixed unit)."""
    return " HU" if layer_modality(layer) == "CT" else ""


def describe_window(layer: Image, unit: str) -> str:
    """One line with ``layer``'s current window, e.g. "CT: level 40 HU, width 400 HU"."""
    window = Window.from_limits(layer.contrast_limits)
    return f"{layer.name}: level {window.level:.0f}{unit}, width {window.width:.0f}{unit}"


@dataclass
class _Target:
    """One image being dragged: where its window started and the bounds it moves within."""

    layer: Image
    start: Window
    data_range: tuple[float, float]
    unit: str


class WindowLevelDrag:
    """The viewer's window/level drag: a mouse-drag callback plus the mouse-mode switch.

    Install one per viewer with :func:`install`. ``events.enabled`` fires when
    the mouse mode is switched, ``events.window`` after each step of a drag.
    """

    def __init__(self, viewer: ViewerModel) -> None:
        self.viewer = viewer
        self._enabled = False
        self._facts: dict[int, tuple[Any, tuple[float, float], str]] = {}
        self.events = EmitterGroup(source=self, enabled=Event, window=Event)

    @property
    def enabled(self) -> bool:
        """Whether a plain left drag sets the window (the mouse mode), not only Ctrl + drag."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if bool(value) != self._enabled:
            self._enabled = bool(value)
            self.events.enabled(value=self._enabled)

    def starts_drag(self, event: Any) -> bool:
        """Whether the press ``event`` begins a window/level drag (see the module docstring)."""
        if event.button != LEFT_BUTTON:
            return False
        modifiers = set(event.modifiers)
        if not (modifiers == {DRAG_MODIFIER} or (self._enabled and not modifiers)):
            return False
        active = self.viewer.layers.selection.active
        return active is None or active.mode == "pan_zoom"

    def scan_facts(self, layer: Image) -> tuple[tuple[float, float], str]:
        """``layer``'s (min, max) and unit, found once per array: both sample the data."""
        array = layer_array(layer)
        cached = self._facts.get(id(layer))
        if cached is None or cached[0] is not array:
            cached = self._facts[id(layer)] = (array, value_range(array), unit_of(layer))
        return cached[1], cached[2]

    def describe(self, layer: Image) -> str:
        """``layer``'s current window in one line, in its units (see :func:`describe_window`)."""
        return describe_window(layer, self.scan_facts(layer)[1])

    def __call__(self, viewer: ViewerModel, event: Any) -> Generator[None, None, None]:
        """napari mouse-drag callback: press, then each move, then the release."""
        if not self.starts_drag(event):
            return
        layers = window_targets(viewer)
        if not layers:
            return
        targets = [
            _Target(layer, Window.from_limits(layer.contrast_limits), *self.scan_facts(layer))
            for layer in layers
        ]
        press = np.asarray(event.pos, dtype=float)
        event.handled = True  # the camera must not pan while the window moves
        yield
        while event.type == "mouse_move":
            shift = np.asarray(event.pos, dtype=float) - press
            self.move(targets, (float(shift[0]), float(shift[1])))
            yield

    def move(self, targets: list[_Target], shift_px: tuple[float, float]) -> None:
        """Set each target's window for a drag of ``shift_px`` from where it started."""
        canvas = self.viewer.canvas.size
        for target in targets:
            window = dragged_window(target.start, shift_px, canvas, target.data_range)
            target.layer.contrast_limits = window.limits
        self.events.window(layers=[target.layer for target in targets])


def install(viewer: ViewerModel) -> WindowLevelDrag:
    """The viewer's :class:`WindowLevelDrag`, added to its mouse-drag callbacks on first call."""
    for callback in viewer.mouse_drag_callbacks:
        if isinstance(callback, WindowLevelDrag):
            return callback
    drag = WindowLevelDrag(viewer)
    viewer.mouse_drag_callbacks.append(drag)
    return drag
