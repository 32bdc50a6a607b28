"""The segments of a Labels layer, as 3D Slicer's segment list shows them (no Qt here).

Each label value has a name, a colour, a visibility, a lock and a status. Names
stay where the plugin always kept them (``metadata["napari_medai"]["label_names"]``,
and the layer's ``name`` feature); colour, lock and status go beside them in
``metadata["napari_medai"]["segments"]`` (``metadata["napari_medai_segments"]``
for a layer drawn with napari's "new labels"; value -> fields, as
:func:`~napari_medai.core.io.writing.label_sidecar` writes them), and the
colours shown are napari's own ``DirectLabelColormap``. napari 0.9 has no
per-label visibility, so a hidden segment is drawn fully transparent.

A lock is honoured by :func:`protect_locks`: napari has no per-label lock, so
after every brush stroke, fill or erase (napari's ``paint`` event, one undo
step) the locked voxels it changed are restored and the step is rewritten
without them, so Ctrl+Z and Ctrl+Shift+Z never touch a locked label either.
:func:`locked_labels` is the one place docks ask which labels to keep
(:func:`~napari_medai._napari.label_edits.write_result`'s ``locked``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap, label_colormap

from napari_medai._napari.label_edits import BACKGROUND
from napari_medai._napari.layers import (
    DRAWN_SEGMENTS_KEY,
    METADATA_KEY,
    label_map_from_layer,
    layer_geometry,
)
from napari_medai.core.io.writing import SEGMENT_STATUSES, label_counts
from napari_medai.core.volume import LabelMap

#: A new segment's status.
NOT_STARTED = SEGMENT_STATUSES[0]
#: napari's default colours, for segments that have none yet.
_DEFAULT_COLORS = label_colormap()
_TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
#: Layers whose paint event restores locked voxels.
_PROTECTED: weakref.WeakSet[Labels] = weakref.WeakSet()


@dataclass(frozen=True)
class Segment:
    """One row of the segment list."""

    value: int
    name: str
    color: tuple[float, float, float]
    visible: bool
    locked: bool
    status: str


def _info(layer: Labels) -> dict[str, Any]:
    """The layer's dict holding ``label_names`` and ``segments``."""
    if METADATA_KEY in layer.metadata:
        return layer.metadata[METADATA_KEY]
    return layer.metadata.setdefault(DRAWN_SEGMENTS_KEY, {})


def _state(layer: Labels) -> dict[str, dict[str, Any]]:
    """The layer's segment fields keyed by str(value), made on first use.

    A layer opened from a file starts with the segments saved with it (the
    reader keeps them in the layer's provenance).
    """
    info = _info(layer)
    if "segments" not in info:
        saved = info.get("provenance", {}).get("segments", {})
        info["segments"] = {str(k): dict(v) for k, v in saved.items()}
    return info["segments"]


def _fields(layer: Labels, value: int) -> dict[str, Any]:
    return _state(layer).setdefault(str(value), {})


def label_names(layer: Labels) -> dict[int, str]:
    """The layer's label names (value -> name)."""
    return {int(k): str(v) for k, v in _info(layer).get("label_names", {}).items()}


def locked_labels(layer: Labels) -> set[int]:
    """The labels locked in ``layer``'s segment list: no edit may change their voxels."""
    return {int(k) for k, f in _state(layer).items() if f.get("locked")}


def label_map_with_segments(layer: Labels) -> LabelMap:
    """The layer's label map carrying its segments (``metadata["segments"]``) for the writers."""
    label_map = label_map_from_layer(layer)
    label_map.metadata["segments"] = segment_fields(layer)
    return label_map


def segment_fields(layer: Labels) -> dict[int, dict[str, Any]]:
    """Value -> colour, lock, status (and visibility) of every segment, as files store them."""
    return {int(k): dict(v) for k, v in _state(layer).items()}


def label_voxels(layer: Labels) -> dict[int, int]:
    """Voxel count of each foreground label present in the layer (a full count)."""
    values, counts = label_counts(np.asarray(layer.data))
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != BACKGROUND}


def voxel_ml(layer: Labels) -> float:
    """One voxel's volume in mL, from the grid the layer lies on (the scan's spacing)."""
    return layer_geometry(layer).voxel_volume_ml() if layer.ndim >= 3 else 0.0


def format_ml(ml: float) -> str:
    """A volume in mL to three significant figures, every whole mL kept: "1534", "12.3", "0.03".

    Never "0" for a segment that has voxels (a one-voxel lesion reads "0.001"),
    and never an exponent: numpy's shortest positional form does both.
    """
    whole_digits = len(str(int(ml)))
    return np.format_float_positional(
        ml, precision=max(3, whole_digits), fractional=False, trim="-"
    )


def segments(layer: Labels, present: set[int] = frozenset()) -> list[Segment]:
    """The segment list: every label named, described or ``present``, background left out."""
    names = label_names(layer)
    state = _state(layer)
    values = sorted(({int(k) for k in state} | set(names) | set(present)) - {BACKGROUND})
    return [
        Segment(
            value,
            names.get(value, f"label {value}"),
            _color(layer, value),
            state.get(str(value), {}).get("visible", True),
            bool(state.get(str(value), {}).get("locked", False)),
            state.get(str(value), {}).get("status", NOT_STARTED),
        )
        for value in values
    ]


def _color(layer: Labels, value: int) -> tuple[float, float, float]:
    """The segment's stored colour, else the one napari shows it in."""
    stored = _state(layer).get(str(value), {}).get("color")
    if stored is not None:
        return tuple(float(c) for c in stored[:3])
    shown = layer.get_color(value)
    if shown is None or isinstance(layer.colormap, DirectLabelColormap) or shown[3] == 0:
        shown = _DEFAULT_COLORS.map(value)
    return tuple(float(c) for c in np.ravel(shown)[:3])


def adopt(layer: Labels, present: set[int] = frozenset()) -> None:
    """Give every segment a stored colour and show the layer with them (napari's direct colours).

    Called when the segment list first shows ``layer``: the colours the user
    sees are then the ones saved with the mask.
    """
    for segment in segments(layer, present):
        _fields(layer, segment.value).setdefault("color", list(segment.color))
    show_colors(layer)
    protect_locks(layer)


def show_colors(layer: Labels) -> None:
    """Draw each segment in its colour, hidden ones transparent; others in napari's defaults."""
    colors: dict[int | None, Any] = {None: (0.5, 0.5, 0.5, 1.0), BACKGROUND: _TRANSPARENT}
    for value, fields in _state(layer).items():
        color = fields.get("color") or _DEFAULT_COLORS.map(int(value))
        visible = fields.get("visible", True)
        colors[int(value)] = (*np.ravel(color)[:3], 1.0) if visible else _TRANSPARENT
    layer.colormap = DirectLabelColormap(color_dict=colors)


def set_color(layer: Labels, value: int, rgb: tuple[float, float, float]) -> None:
    """Colour segment ``value`` (0..1 RGB), shown at once and saved with the mask."""
    _fields(layer, value)["color"] = [float(c) for c in rgb[:3]]
    show_colors(layer)


def set_visible(layer: Labels, value: int, visible: bool) -> None:
    """Show or hide segment ``value`` (its voxels stay; only the drawing changes)."""
    _fields(layer, value)["visible"] = bool(visible)
    show_colors(layer)


def set_locked(layer: Labels, value: int, locked: bool) -> None:
    """Lock or unlock segment ``value``: a locked label is never painted, filled or erased."""
    _fields(layer, value)["locked"] = bool(locked)
    protect_locks(layer)


def set_status(layer: Labels, value: int, status: str) -> None:
    """Set segment ``value``'s status: one of :data:`SEGMENT_STATUSES`."""
    if status not in SEGMENT_STATUSES:
        raise ValueError(f"status {status!r} is not one of {SEGMENT_STATUSES}")
    _fields(layer, value)["status"] = status


def rename(layer: Labels, value: int, name: str) -> None:
    """Name segment ``value``: in the label names saved with the mask and the layer's features."""
    names = _info(layer).setdefault("label_names", {})
    names[str(value)] = name.strip() or f"label {value}"
    _name_feature(layer, value, names[str(value)])


def _name_feature(layer: Labels, value: int, name: str) -> None:
    """Keep the ``name`` feature (napari's status bar shows it under the cursor) in step."""
    features = layer.features
    if not {"index", "name"} <= set(features.columns):
        return
    rows = features["index"] == value
    if rows.any():
        features.loc[rows, "name"] = name
        layer.features = features
    else:
        row = {"index": [value], "name": [name]}
        layer.features = {k: [*features[k].tolist(), *row[k]] for k in ("index", "name")}


def add_segment(layer: Labels, present: set[int] = frozenset(), name: str = "") -> int:
    """A new segment with the next free value, selected for painting; returns its value."""
    taken = {s.value for s in segments(layer, present)}
    value = max(taken, default=BACKGROUND) + 1
    if value > np.iinfo(layer.data.dtype).max:
        value = next(v for v in range(1, np.iinfo(layer.data.dtype).max + 1) if v not in taken)
    rename(layer, value, name or f"segment {value}")
    _fields(layer, value).update(color=list(_color(layer, value)), status=NOT_STARTED)
    show_colors(layer)
    layer.selected_label = value
    return value


def delete_segment(layer: Labels, value: int) -> int:
    """Erase segment ``value``'s voxels (one undoable step) and forget it; returns voxels erased.

    A locked segment is refused: unlock it first.
    """
    if value in locked_labels(layer):
        raise ValueError(f"segment {value} is locked: unlock it before deleting it")
    indices = np.nonzero(np.asarray(layer.data) == value)
    layer.data_setitem(indices, BACKGROUND)
    _state(layer).pop(str(value), None)
    _info(layer).get("label_names", {}).pop(str(value), None)
    show_colors(layer)
    if layer.selected_label == value:
        layer.selected_label = BACKGROUND
    return int(indices[0].size)


def protect_locks(layer: Labels) -> None:
    """Restore locked voxels after every edit of ``layer``; colour new labels (once a layer)."""
    if layer in _PROTECTED:
        return
    _PROTECTED.add(layer)
    layer.events.paint.connect(_after_paint)


def run_now(task: Callable[[], None]) -> None:
    """Run ``task`` at once: what :data:`defer` does without an event loop."""
    task()


#: How a correction runs when napari announces a step before writing it (its
#: polygon tool does): the segment list sets it to run after the current event.
defer: Callable[[Callable[[], None]], None] = run_now


def _after_paint(event: Any) -> None:
    """Keep locked labels as they were; give a label painted for the first time its colour."""
    layer, item = event.source, event.value
    if _not_written_yet(layer, item):
        defer(lambda: _correct(layer, item))
    else:
        _correct(layer, item)


def _not_written_yet(layer: Labels, item: list[Any]) -> bool:
    """Whether napari announced this step before writing it (mouse strokes come after)."""
    for atom in item:
        if not (isinstance(atom, tuple) and len(atom) == 3):
            region = np.asarray(layer.data[atom.slice_key])
            shown = region if atom.mask is None else region[atom.mask]
            return bool(np.any(shown != atom.new_value))
    return False


def _correct(layer: Labels, item: list[Any]) -> None:
    """Restore locked voxels one step changed; colour labels it painted for the first time."""
    _restore_locked(layer, item)
    new = {int(v) for v in np.unique(painted_values(item))} - {BACKGROUND}
    unseen = {v for v in new if "color" not in _state(layer).get(str(v), {})}
    for value in unseen:
        _fields(layer, value)["color"] = list(_color(layer, value))
    if unseen:
        show_colors(layer)


def painted_values(item: list[Any]) -> np.ndarray:
    """The label values one paint step wrote (its atoms' new values)."""
    values = [
        np.ravel(atom[2]) if isinstance(atom, tuple) and len(atom) == 3 else [atom.new_value]
        for atom in item
    ]
    return np.concatenate(values) if values else np.zeros(0, np.int64)


def _restore_locked(layer: Labels, item: list[Any]) -> None:
    """Undo what one paint step did to locked labels, and rewrite the step without it."""
    locked = np.fromiter(locked_labels(layer), dtype=np.int64)
    if not locked.size:
        return
    restored = 0
    for index, atom in enumerate(item):
        item[index], count = _without_locked(layer, atom, locked)
        restored += count
    if restored:
        layer.refresh()


def _without_locked(layer: Labels, atom: Any, locked: np.ndarray) -> tuple[Any, int]:
    """``atom`` with its changes to locked voxels put back in the data and dropped from it."""
    if isinstance(atom, tuple) and len(atom) == 3:
        indices, old, new = atom
        keep = ~(np.isin(old, locked) | np.isin(new, locked))
        if keep.all():
            return atom, 0
        held = tuple(np.asarray(axis)[~keep] for axis in indices)
        layer.data[held] = np.asarray(old)[~keep]
        new = new if np.isscalar(new) or np.ndim(new) == 0 else np.asarray(new)[keep]
        return (tuple(np.asarray(a)[keep] for a in indices), np.asarray(old)[keep], new), int(
            np.count_nonzero(~keep)
        )
    region = np.asarray(layer.data[atom.slice_key])
    mask = np.ones(region.shape, bool) if atom.mask is None else atom.mask
    old = np.array(region)
    old[mask] = atom.old_values if atom.mask is not None else atom.old_values[mask]
    held = mask & (np.isin(old, locked) | bool(np.isin(atom.new_value, locked)))
    if not held.any():
        return atom, 0
    region[held] = old[held]
    layer.data[atom.slice_key] = region
    kept = mask & ~held
    return atom._replace(mask=kept, old_values=old[kept]), int(np.count_nonzero(held))
