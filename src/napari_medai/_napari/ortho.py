"""Linked orthogonal views: side viewers that mirror the main viewer, without Qt.

napari draws one plane per canvas (napari#662). The Orthogonal views dock adds
canvases of their own ``ViewerModel``; this module keeps those models in step
with the main viewer, so all of it is testable headless:

- each Image and Labels layer of the main viewer has a copy in every side
  viewer that shares its data array (the scan is never copied) and follows
  its display properties; the world transform comes with it, so every view
  shows the scan's physical aspect ratio;
- a stroke painted in any view goes into the main layer's undo history and
  emits the main layer's ``paint`` event: Ctrl+Z, autosave and anything else
  listening to the user's layer see it as if it were painted there;
- one shared crosshair point in world coordinates: a click or a slice scroll
  in any view moves it, and each view takes from it only the axes it does
  not display, so scrolling one view reslices only the views it cuts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer
from napari.utils.events import EmitterGroup, Event
from napari.utils.events.event import WarningEmitter

from napari_medai._napari.layers import world_geometry

#: The plane names and the spatial axis (among the last three, S P L) each is normal to.
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
#: Spatial axis index of S (head): views showing it vertically put the head at the top.
SUPERIOR = 0
#: A press that moves more than this many screen pixels is a drag (pan), not a click.
CLICK_SLOP_PX = 4.0
#: Properties a side view's copy hands back to the user's layer (its keyboard shortcuts).
BACK_SYNCED = ("selected_label", "mode", "brush_size", "preserve_labels", "n_edit_dimensions")
#: Layer events that never become a property of the copy.
_NOT_SYNCED = {"name", "thumbnail", "metadata"}


class LinkedLabels(Labels):
    """A side view's copy of a Labels layer: same array, the source's undo history.

    napari records each stroke through ``_append_to_undo_history`` (one item
    per stroke, see ``Labels._save_history``); handing it to the source makes
    one history for every view and fires the source's ``paint`` event.
    """

    def __init__(self, source: Labels, data: Any, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.linked_to = source

    @property
    def _type_string(self) -> str:
        # napari's keybindings and layer actions match on "labels".
        return "labels"

    def _append_to_undo_history(self, item: list) -> None:
        self.linked_to._redo_history.clear()
        self.linked_to._append_to_undo_history(item)

    def undo(self) -> None:
        """Undo the last edit of the source layer, from whichever view it came."""
        self.linked_to.undo()

    def redo(self) -> None:
        """Redo on the source layer."""
        self.linked_to.redo()


def is_mirrored(layer: Layer) -> bool:
    """Whether side views show ``layer``: images and label maps."""
    return isinstance(layer, Image | Labels)


def mirror_layer(layer: Layer) -> Layer:
    """A copy of ``layer`` for a side view, sharing its data array."""
    data, kwargs, kind = layer.as_layer_data_tuple()
    if isinstance(layer, Labels):
        return LinkedLabels(layer, data, **kwargs)
    return Layer.create(data, kwargs, kind)


def synced_properties(layer: Layer) -> set[str]:
    """Names of the layer's settable properties that have an event."""
    cls = type(layer)
    names = set()
    for name, emitter in layer.events.emitters.items():
        attr = getattr(cls, name, None)
        if isinstance(emitter, WarningEmitter) or name in _NOT_SYNCED:
            continue
        if isinstance(attr, property) and attr.fset is not None:
            names.add(name)
    return names


def spatial_axes(ndim: int) -> tuple[int, int, int]:
    """The world axes S, P, L: the last three (a leading time axis comes first)."""
    return ndim - 3, ndim - 2, ndim - 1


def plane_order(ndim: int, plane: str) -> tuple[int, ...]:
    """A dims order showing ``plane``: leading axes, then its normal, then (rows, columns).

    Axial shows (P, L), coronal (S, L), sagittal (S, P): the patient's left on
    the screen's right and the face to the left, as radiologists read them.
    """
    axes = spatial_axes(ndim)
    normal = axes[PLANES[plane]]
    shown = tuple(axis for axis in axes if axis != normal)
    return (*range(ndim - 3), normal, *shown)


def shown_plane(viewer: ViewerModel) -> str | None:
    """The plane the viewer shows in 2D, or None (3D display, fewer than 3 axes)."""
    dims = viewer.dims
    if dims.ndim < 3 or dims.ndisplay != 2:
        return None
    normal = dims.order[-3] - (dims.ndim - 3)
    return next((name for name, axis in PLANES.items() if axis == normal), None)


def side_planes(main: ViewerModel) -> tuple[str, str]:
    """The two planes the main viewer does not show (coronal and sagittal by default)."""
    shown = shown_plane(main) or "axial"
    others = [name for name in PLANES if name != shown]
    return others[0], others[1]


def head_up(viewer: ViewerModel) -> bool:
    """Whether the view's vertical axis is S, so the head belongs at the top."""
    dims = viewer.dims
    return dims.ndim >= 3 and dims.displayed[0] == spatial_axes(dims.ndim)[SUPERIOR]


def crosshair_segments(viewer: ViewerModel, point: Sequence[float]) -> np.ndarray | None:
    """Two lines through ``point`` across the layers' extent, in scene (x, y) coordinates.

    napari's 2D scene is the world's displayed axes reversed (x is the column
    axis); ``point`` is in the viewer's world axes. None in 3D or when empty.
    """
    dims = viewer.dims
    if dims.ndisplay != 2 or not len(viewer.layers) or len(point) != dims.ndim:
        return None
    row, col = dims.displayed
    extent = np.asarray(viewer.layers.extent.world)
    (y0, y1), (x0, x1) = extent[:, row], extent[:, col]
    y, x = point[row], point[col]
    return np.array([[x0, y], [x1, y], [x, y0], [x, y1]], dtype=float)


def snap(viewer: ViewerModel, axis: int, value: float) -> float:
    """``value`` on the nearest slice of the viewer's ``axis`` (a voxel centre)."""
    start, stop, step = viewer.dims.range[axis]
    value = min(max(value, start), stop)
    return float(start + round((value - start) / step) * step) if step else float(value)


class OrthoLink:
    """Keep side ``ViewerModel``s showing the main viewer's layers on other planes.

    ``on_stale`` is called when a view needs a refresh because another view
    edited shared data; it must (now or later) call :meth:`flush`. The Qt dock
    passes a short single-shot timer that each dab restarts, so the other views
    redraw a brush stroke once it pauses. ``events.point`` fires when the
    crosshair moves.
    """

    def __init__(
        self,
        main: ViewerModel,
        sides: Sequence[ViewerModel],
        on_stale: Callable[[], None] | None = None,
    ) -> None:
        self.main = main
        self.sides = list(sides)
        self.events = EmitterGroup(source=self, point=Event, planes=Event)
        self._on_stale = on_stale or self.flush
        self._copies: dict[Layer, list[Layer]] = {}
        self._seen_slice: dict[Layer, object] = {}
        self._stale: dict[Layer, Layer | None] = {}
        self._busy = False
        self.linked = True
        self.point = np.asarray(main.dims.point, dtype=float)
        self.planes = side_planes(main)
        for layer in main.layers:
            self._add(layer)
        self._set_orders()
        self._connect()

    def _connect(self) -> None:
        layers = self.main.layers
        layers.events.inserted.connect(self._on_inserted)
        layers.events.removed.connect(self._on_removed)
        layers.events.moved.connect(self._sync_order)
        layers.selection.events.active.connect(self._sync_active)
        self.main.dims.events.order.connect(self._on_main_order)
        self.main.dims.events.ndisplay.connect(self._on_main_order)
        self.main.dims.events.ndim.connect(self._on_main_ndim)
        for view in self.views:
            view.dims.events.point.connect(self._on_dims_point)
            view.mouse_drag_callbacks.append(self._click)

    def disconnect(self) -> None:
        """Stop following the main viewer (the dock is closing)."""
        self.linked = False
        layers = self.main.layers
        layers.events.inserted.disconnect(self._on_inserted)
        layers.events.removed.disconnect(self._on_removed)
        layers.events.moved.disconnect(self._sync_order)
        layers.selection.events.active.disconnect(self._sync_active)
        self.main.dims.events.order.disconnect(self._on_main_order)
        self.main.dims.events.ndisplay.disconnect(self._on_main_order)
        self.main.dims.events.ndim.disconnect(self._on_main_ndim)
        for view in self.views:
            view.dims.events.point.disconnect(self._on_dims_point)
            if self._click in view.mouse_drag_callbacks:
                view.mouse_drag_callbacks.remove(self._click)
        for layer in list(self._copies):
            self._drop(layer)

    @property
    def views(self) -> list[ViewerModel]:
        """The main viewer, then the side viewers."""
        return [self.main, *self.sides]

    def copies(self, layer: Layer) -> list[Layer]:
        """The side views' copies of a main layer (empty when not mirrored)."""
        return list(self._copies.get(layer, []))

    # layers

    def _add(self, layer: Layer) -> None:
        if not is_mirrored(layer) or layer in self._copies:
            return
        copies = [mirror_layer(layer) for _ in self.sides]
        self._copies[layer] = copies
        with self._quiet():
            for side, copy in zip(self.sides, copies, strict=True):
                side.layers.append(copy)
                copy.events.connect(self._on_copy_event)
        layer.events.connect(self._on_main_event)
        self._seen_slice[layer] = layer._slice_input

    def _drop(self, layer: Layer) -> None:
        if layer not in self._copies:  # never mirrored (e.g. Points), or dropped already
            return
        copies = self._copies.pop(layer)
        self._seen_slice.pop(layer, None)
        self._stale.pop(layer, None)
        layer.events.disconnect(self._on_main_event)
        with self._quiet():
            for side, copy in zip(self.sides, copies, strict=True):
                copy.events.disconnect(self._on_copy_event)
                if copy in side.layers:
                    side.layers.remove(copy)

    def _on_inserted(self, event: Event) -> None:
        first = not any(side.layers for side in self.sides)
        self._add(event.value)
        self._sync_order()
        self._sync_active()
        if first:
            self._set_orders()
        self._push_point()

    def _on_removed(self, event: Event) -> None:
        self._drop(event.value)

    def _sync_order(self, _event: Event | None = None) -> None:
        for index, side in enumerate(self.sides):
            mirrored = [layer for layer in self.main.layers if layer in self._copies]
            wanted = [self._copies[layer][index] for layer in mirrored]
            for position, copy in enumerate(wanted):
                current = side.layers.index(copy)
                if current != position:
                    side.layers.move(current, position)

    def _sync_active(self, _event: Event | None = None) -> None:
        active = self.main.layers.selection.active
        for index, side in enumerate(self.sides):
            copies = self._copies.get(active)
            side.layers.selection.active = copies[index] if copies else None

    # properties and shared data

    def _on_main_event(self, event: Event) -> None:
        layer = event.source
        if self._busy or layer not in self._copies:
            return
        if event.type in ("paint", "labels_update"):
            self._mark_stale(layer, layer)
        elif event.type == "set_data":
            # A refresh with the same slice input is new data (undo, a model's
            # output written in place); a new slice input is just a scroll.
            if layer._slice_input is self._seen_slice.get(layer):
                self._mark_stale(layer, layer)
            self._seen_slice[layer] = layer._slice_input
        elif event.type in synced_properties(layer):
            self._copy_property(layer, event.type)

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Ignore the events our own changes cause (no echo between views)."""
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    def _copy_property(self, layer: Layer, name: str) -> None:
        value = getattr(layer, name)
        with self._quiet():
            for copy in self._copies[layer]:
                setattr(copy, name, value)

    def _on_copy_event(self, event: Event) -> None:
        copy = event.source
        if self._busy or not isinstance(copy, LinkedLabels):
            return
        if event.type == "labels_update":
            self._mark_stale(copy.linked_to, copy)
        elif event.type in BACK_SYNCED:
            with self._quiet():
                setattr(copy.linked_to, event.type, getattr(copy, event.type))
            self._copy_property(copy.linked_to, event.type)

    def _mark_stale(self, layer: Layer, origin: Layer | None) -> None:
        """Views of ``layer`` other than ``origin`` must redraw its data."""
        previous = self._stale.get(layer, origin)
        self._stale[layer] = origin if previous is origin else None
        self._on_stale()

    def flush(self) -> None:
        """Redraw every view of each layer whose data another view changed."""
        stale, self._stale = self._stale, {}
        with self._quiet():
            for layer, origin in stale.items():
                for view_layer in (layer, *self._copies.get(layer, [])):
                    if view_layer is not origin:
                        view_layer.refresh(thumbnail=view_layer is layer)
                self._seen_slice[layer] = layer._slice_input

    # planes and the crosshair

    def _on_main_order(self, _event: Event | None = None) -> None:
        planes = side_planes(self.main)
        if planes != self.planes:
            self.planes = planes
            self._set_orders()

    def _on_main_ndim(self, _event: Event | None = None) -> None:
        self.point = np.asarray(self.main.dims.point, dtype=float)
        self._set_orders()

    def _set_orders(self) -> None:
        with self._quiet():
            for side, plane in zip(self.sides, self.planes, strict=True):
                if side.dims.ndim >= 3:
                    side.dims.order = plane_order(side.dims.ndim, plane)
                    side.scene.camera.orientation2d = ("up" if head_up(side) else "down", "right")
                side.reset_view()
        self._push_point()
        self.events.planes()

    def _axes(self, view: ViewerModel) -> Iterator[tuple[int, int]]:
        """(view axis, main axis) pairs: views align on their last axes, as napari does."""
        offset = len(self.point) - view.dims.ndim
        for axis in range(view.dims.ndim):
            if axis + offset >= 0:
                yield axis, axis + offset

    def view_point(self, view: ViewerModel) -> np.ndarray:
        """The crosshair in ``view``'s world axes."""
        return np.array([self.point[main_axis] for _axis, main_axis in self._axes(view)])

    def _on_dims_point(self, event: Event) -> None:
        if self._busy:
            return
        view = next((v for v in self.views if v.dims is event.source), None)
        if view is None or len(self.point) != self.main.dims.ndim:
            self.point = np.asarray(self.main.dims.point, dtype=float)
            return
        moved = {
            main_axis: view.dims.point[axis]
            for axis, main_axis in self._axes(view)
            if axis in view.dims.not_displayed and view.dims.point[axis] != self.point[main_axis]
        }
        if moved:
            self.set_point(moved)

    def set_point(self, values: dict[int, float]) -> None:
        """Move the crosshair (main viewer's world axes) and the slices that cut it."""
        for axis, value in values.items():
            self.point[axis] = value
        self._push_point()
        self.events.point()

    def _push_point(self) -> None:
        if len(self.point) != self.main.dims.ndim:
            self.point = np.asarray(self.main.dims.point, dtype=float)
        with self._quiet():
            for view in self.views:
                axes, values = [], []
                for axis, main_axis in self._axes(view):
                    value = self.point[main_axis]
                    if axis in view.dims.not_displayed and view.dims.point[axis] != value:
                        axes.append(axis)
                        values.append(value)
                if axes:
                    view.dims.set_point(axes, values)

    def click_at(self, view: ViewerModel, position: Sequence[float]) -> None:
        """Put the crosshair at a world ``position`` clicked in ``view``."""
        values = {}
        for axis, main_axis in self._axes(view):
            if axis in view.dims.displayed and axis < len(position):
                values[main_axis] = snap(view, axis, position[axis])
        self.set_point(values)

    def _click(self, view: ViewerModel, event: Any) -> Iterator[None]:
        """A click without a drag, in pan/zoom mode, moves the crosshair there."""
        active = view.layers.selection.active
        if view.dims.ndisplay != 2 or (active is not None and active.mode != "pan_zoom"):
            return
        press = np.asarray(event.pos, dtype=float)

        def moved() -> bool:
            return np.hypot(*(np.asarray(event.pos, dtype=float) - press)) > CLICK_SLOP_PX

        yield
        while event.type == "mouse_move":
            if moved():
                return
            yield
        if event.type == "mouse_release" and not moved():
            self.click_at(view, event.position)


def tilt_problem(layer: Layer) -> str | None:
    """Why ``layer`` is not shown exactly on the side planes, or None when it is.

    napari slices a layer whose axes are turned from the world's by showing its
    voxel plane without the out-of-plane turn, so a side view of an oblique
    scan is off by up to (extent x sine of the turn). Said when that exceeds
    half the finest voxel, the precision of a click.
    """
    if not is_mirrored(layer) or layer.ndim < 3:
        return None
    geometry = world_geometry(layer)
    cosines = np.clip(np.abs(geometry.direction).max(axis=0), 0.0, 1.0)
    degrees = float(np.degrees(np.arccos(cosines)).max())
    voxels = np.ptp(np.asarray(layer.extent.data)[:, -3:], axis=0)
    extent_mm = float(np.max(voxels * geometry.spacing))
    if extent_mm * np.sin(np.radians(degrees)) <= geometry.spacing.min() / 2:
        return None
    return (
        f"'{layer.name}' is turned {degrees:.1f} degrees from the patient axes: the side views "
        "show its voxel planes, up to "
        f"{extent_mm * np.sin(np.radians(degrees)):.0f} mm off the true planes at its edges"
    )
