"""napari side of Prompt: prompt layers <-> :class:`Prompts`, the preview, commit and fill.

Prompts are drawn in two layers on the scan's grid, so their data coordinates are the
scan's voxel indices (z, y, x): a Points layer of clicks and a Shapes layer of boxes
(rectangles), scribbles (paths and lines) and lassos (polygons). Each item's
``positive`` feature says whether it marks the object (green) or not (red).

Decisions: a rectangle is a 2D box on its slice (the engine frames it as deep as it is
wide); a rectangle drawn on another slice over the previous one joins it into one 3D box
between the two slices. A lasso marks its filled inside on its slice: it becomes one
scribble per row of its inside, so the engine takes it as seeds like a painted stroke.
Commit and Fill between slices write through :func:`write_result`, so each is one step
of the layer's undo history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Points, Shapes
from skimage.draw import polygon as polygon_inside

from napari_medai._napari.label_edits import LabelEdit, Overwrite, write_result
from napari_medai._napari.layers import METADATA_KEY, layer_geometry
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.prompt.engine import (
    DEFAULT_ENGINE,
    PromptEngine,
    PromptResult,
    PromptSession,
    engine_named,
    update_job,
)
from napari_medai.core.prompt.interpolate import fill_between_slices
from napari_medai.core.prompt.kept import KeptEngine
from napari_medai.core.prompt.prompts import Box, Point, Prompt, PromptError, Prompts, Scribble
from napari_medai.core.volume import Volume

POSITIVE_COLOR = "#33dd55"
NEGATIVE_COLOR = "#ff4040"
PREVIEW_COLOR = "#ffd21f"
#: Layer names; the scan's name goes first ("CT – prompt points").
POINTS_SUFFIX = " – prompt points"
SHAPES_SUFFIX = " – prompt shapes"
PREVIEW_SUFFIX = " – prompt preview"
#: Where the preview layer keeps the box its object spans.
PREVIEW_REGION = "prompt_region"


def polarity_color(positive: bool) -> str:
    """Green for what is the object, red for what is not."""
    return POSITIVE_COLOR if positive else NEGATIVE_COLOR


def _on_grid(scan: Image) -> dict:
    """Layer arguments that put a layer on the scan's grid (data coordinates = voxel indices)."""
    return {
        "affine": scan.affine.affine_matrix,
        "units": scan.units,
        "axis_labels": scan.axis_labels,
    }


def _find(viewer: ViewerModel, name: str, kind: type) -> object | None:
    return next((la for la in viewer.layers if la.name == name and isinstance(la, kind)), None)


def prompt_layers(viewer: ViewerModel, scan: Image) -> tuple[Points, Shapes]:
    """The scan's prompt Points and Shapes layers, added the first time."""
    points = _find(viewer, scan.name + POINTS_SUFFIX, Points)
    if points is None:
        points = viewer.add_points(
            np.empty((0, 3)),
            name=scan.name + POINTS_SUFFIX,
            features={"positive": np.empty(0, dtype=bool)},
            feature_defaults={"positive": True},
            face_color=POSITIVE_COLOR,
            size=7,
            border_width=0.1,
            border_color="white",
            **_on_grid(scan),
        )
    shapes = _find(viewer, scan.name + SHAPES_SUFFIX, Shapes)
    if shapes is None:
        shapes = viewer.add_shapes(
            name=scan.name + SHAPES_SUFFIX,
            ndim=3,
            features={"positive": np.empty(0, dtype=bool)},
            feature_defaults={"positive": True},
            edge_color=POSITIVE_COLOR,
            face_color="transparent",
            edge_width=1.5,
            **_on_grid(scan),
        )
    return points, shapes


def set_polarity(points: Points, shapes: Shapes, positive: bool) -> None:
    """The next click or shape marks the object (``positive``) or what is not."""
    color = polarity_color(positive)
    for layer in (points, shapes):
        # napari applies current colours and feature defaults to the selected items too:
        # the last click would flip with the next one.
        layer.selected_data = set()
        layer.feature_defaults = {"positive": positive}
    points.current_face_color = color
    shapes.current_edge_color = color


def _index(zyx: np.ndarray) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in np.rint(zyx))
    return (z, y, x)


def _positives(layer: Points | Shapes) -> list[bool]:
    if "positive" not in layer.features:
        return [True] * len(layer.data)
    return [bool(v) for v in layer.features["positive"]]


def points_prompts(points: Points) -> list[Prompt]:
    """One :class:`Point` per click."""
    return [
        Point(_index(zyx), positive)
        for zyx, positive in zip(np.asarray(points.data), _positives(points), strict=True)
    ]


def shapes_prompts(shapes: Shapes, shape: tuple[int, int, int]) -> list[Prompt]:
    """Boxes, scribbles and lassos from the Shapes layer, refusing a shape it cannot use."""
    found: list[Prompt] = []
    open_box: Box | None = None
    kinds, positives = shapes.shape_type, _positives(shapes)
    for number, (vertices, kind, positive) in enumerate(zip(shapes.data, kinds, positives)):
        vertices = np.asarray(vertices)
        if kind == "rectangle":
            box = Box(_index(vertices.min(axis=0)), _index(vertices.max(axis=0)))
            joined = _joined(open_box, box)
            if joined is not None:
                found[found.index(open_box)] = joined
                open_box = None
            else:
                found.append(box)
                open_box = box
        elif kind in ("path", "line"):
            found.append(Scribble(tuple(_index(v) for v in vertices), positive))
        elif kind == "polygon":
            found += lasso_scribbles(vertices, positive, shape)
        else:
            raise PromptError(
                f"prompt shape {number} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}: "
                "draw a rectangle (box), a path (scribble) or a polygon (lasso)"
            )
    return found


def _joined(first: Box | None, second: Box) -> Box | None:
    """One 3D box from two rectangles on different slices that overlap in-plane, else None."""
    if first is None or not (first.is_2d and second.is_2d) or first.start[0] == second.start[0]:
        return None
    low, high = np.maximum(first.low, second.low), np.minimum(first.high, second.high)
    if np.any(low[1:] > high[1:]):
        return None
    start = np.minimum(first.low, second.low)
    stop = np.maximum(first.high, second.high)
    return Box(_index(start), _index(stop))


def lasso_scribbles(
    vertices: np.ndarray, positive: bool, shape: tuple[int, int, int]
) -> list[Scribble]:
    """The polygon's filled inside on its slice, as one scribble per run of each row."""
    z = _index(vertices[0])[0]
    if not 0 <= z < shape[0]:
        raise PromptError(f"a lasso on slice {z} is outside the scan's {shape[0]} slices")
    rows, cols = polygon_inside(vertices[:, 1], vertices[:, 2], shape[1:])
    scribbles = []
    for row in np.unique(rows):
        columns = np.sort(cols[rows == row])
        breaks = np.flatnonzero(np.diff(columns) > 1)
        for first, last in zip(
            np.r_[columns[0], columns[breaks + 1]], np.r_[columns[breaks], columns[-1]]
        ):
            scribbles.append(
                Scribble(((z, int(row), int(first)), (z, int(row), int(last))), positive)
            )
    return scribbles


def layers_prompts(points: Points, shapes: Shapes, shape: tuple[int, int, int]) -> Prompts:
    """Every prompt in the two layers, checked to lie inside a scan of ``shape``."""
    prompts = Prompts(tuple(points_prompts(points) + shapes_prompts(shapes, shape)))
    prompts.check_inside(shape)
    return prompts


@dataclass
class PromptObject:
    """One object being prompted: its scan, its engine session (made in the job) and mask."""

    volume: Volume
    engine: str
    initial: np.ndarray | None = None
    session: PromptSession | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


#: The weight-free engine's worker, kept for every object of the session (see core.prompt.kept).
_kept: dict[str, KeptEngine] = {}


def dock_engine(name: str) -> PromptEngine:
    """The engine ``name`` as a dock runs it: the weight-free one in a worker kept for napari."""
    if name != DEFAULT_ENGINE:
        return engine_named(name)
    if name not in _kept:
        _kept[name] = KeptEngine(name)
    return _kept[name]


def prompt_update_job(target: PromptObject, prompts: Prompts) -> Job[PromptResult]:
    """Start the object's session the first time, then update it (in the engine's worker)."""
    if target.session is None:
        yield Progress(None, "preparing the scan for prompting")
        target.session = dock_engine(target.engine).start(target.volume, target.initial)
    return (yield from update_job(target.session, target.volume, prompts, target.engine))


def show_preview(viewer: ViewerModel, scan: Image, mask: np.ndarray | None) -> Labels:
    """Show ``mask`` (the object so far) in the scan's preview layer, added the first time.

    Later masks are written in place, only inside the box the old and the new object
    span: replacing the layer's data would make napari re-measure every layer's extent.
    """
    name = scan.name + PREVIEW_SUFFIX
    layer = _find(viewer, name, Labels)
    if layer is None:
        layer = viewer.add_labels(
            np.zeros(scan.data.shape, np.uint8),
            name=name,
            opacity=0.45,
            colormap={None: "transparent", 0: "transparent", 1: PREVIEW_COLOR},
            **_on_grid(scan),
        )
        layer.contour = 0
    old = layer.metadata.get(PREVIEW_REGION)
    new = _bounding_region(mask) if mask is not None and mask.any() else None
    region = _union(old, new)
    if region is not None:
        layer.data[region] = 0 if new is None else mask[region]
        layer.metadata = {**layer.metadata, PREVIEW_REGION: new}
        layer.refresh()
    return layer


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """The smallest box of slices holding boxes ``a`` and ``b`` (either may be None)."""
    if a is None or b is None:
        return a or b
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b))


def new_labels_layer(viewer: ViewerModel, scan: Image) -> Labels:
    """An empty Labels layer on the scan's grid, for the first committed object."""
    layer = viewer.add_labels(
        np.zeros(scan.data.shape, np.uint8), name=f"{scan.name} – labels", **_on_grid(scan)
    )
    _medai_info(layer)
    return layer


def _medai_info(layer: Labels) -> dict:
    """The layer's napari-medai metadata, made from its grid if it has none yet."""
    info = layer.metadata.get(METADATA_KEY)
    if not info:
        info = {
            "geometry": layer_geometry(layer).to_dict(),
            "shape": list(layer.data.shape),
            "provenance": {},
        }
        layer.metadata = {**layer.metadata, METADATA_KEY: info}
    return info


def _bounding_region(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box of slices holding every voxel of ``mask``."""
    found = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    return tuple(slice(int(f[0]), int(f[-1]) + 1) for f in found)


def commit_object(
    layer: Labels, mask: np.ndarray, value: int, name: str, policy: Overwrite
) -> LabelEdit:
    """Write ``mask`` into ``layer`` as label ``value`` called ``name``, one undoable step.

    The label's name joins the layer's label names (Train and Export read them there),
    and the slices the object spans are recorded as prompted: every one of them is
    annotated completely, as Train takes a painted slice.
    """
    if not mask.any():
        raise PromptError("the object is empty: give a prompt inside it before committing")
    if mask.shape != layer.data.shape:
        raise PromptError(
            f"the object has shape {mask.shape} but '{layer.name}' {layer.data.shape}: "
            "pick a Labels layer drawn on the prompted scan"
        )
    region = _bounding_region(mask)
    result = np.where(mask[region], value, 0).astype(np.int64)
    edit = write_result(layer, result, policy, region=region)
    info = _medai_info(layer)
    names = {**info.get("label_names", {}), str(value): name}
    info["label_names"] = names
    info.setdefault("prompted", {})[str(value)] = {
        "name": name,
        "slices": [region[0].start, region[0].stop - 1],
    }
    values = sorted({0, *(int(k) for k in names)})
    layer.features = {"index": values, "name": [names.get(str(v), str(v)) for v in values]}
    return edit


def fill_label(layer: Labels, value: int) -> tuple[LabelEdit, str]:
    """Fill label ``value`` between the slices it is painted on, one undoable step."""
    data = np.asarray(layer.data)
    if not np.any(data == value):
        raise PromptError(f"'{layer.name}' has no label {value} to fill between slices")
    spacing = layer_geometry(layer).spacing
    filled = fill_between_slices(np.where(data == value, value, 0).astype(data.dtype), spacing)
    if not filled.filled:
        return LabelEdit(layer.name, 0, 0), filled.summary()
    return write_result(layer, filled.labels.astype(np.int64), Overwrite.KEEP), filled.summary()
