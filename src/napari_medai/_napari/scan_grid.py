"""Which scan grid a Labels layer lies on: the one rule for saving, exporting and autosave.

A layer the reader or a model made keeps its own grid; a layer drawn with
napari's "new labels" button is displayed on its scan's transform (or on an
axis-aligned extent that is resampled onto the scan it overlaps most); a layer
made from a bare array (``viewer.add_labels(array)``, no scale) takes the grid
of the one open scan of its shape, or is refused: it is never written silently
at origin 0 with 1 mm voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.components import LayerList
from napari.layers import Labels, Layer
from napari.utils.notifications import show_info, show_warning

from napari_medai._napari.layers import (
    METADATA_KEY,
    label_map_from_layer,
    layer_geometry,
    stored_geometry,
    world_geometry,
)
from napari_medai.core.errors import GeometryError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.writing import (
    labels_outside,
)
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap


def _overlap(a: Geometry, a_shape: tuple, b: Geometry, b_shape: tuple) -> float:
    """Fraction of grid a's bounding box (world) that lies inside grid b's."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in a_shape], indexing="ij")).reshape(3, -1).T
    world = a.index_to_world(corners)
    to_b = np.linalg.inv(b.direction @ np.diag(b.spacing))
    index_b = (world - b.origin) @ to_b.T
    inside = np.all((index_b >= -0.5) & (index_b <= np.array(b_shape) - 0.5), axis=1)
    return float(inside.mean())


def reference_image(label_map: LabelMap, scans: list[Layer]) -> Layer | None:
    """The scan a hand-made label layer was drawn on, if it is not already on one.

    A scan whose grid equals the labels' wins; otherwise the scan the labels
    overlap most (napari's "new labels" with several layers selected spans the
    union of their extents on an axis-aligned grid).
    """
    shape = label_map.spatial_shape
    for scan in scans:
        if layer_geometry(scan) == label_map.geometry and scan.data.shape[-3:] == shape:
            return None
    scored = [
        (_overlap(layer_geometry(s), s.data.shape[-3:], label_map.geometry, shape), s)
        for s in scans
    ]
    scored = [(score, scan) for score, scan in scored if score > 0]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def scan_of_shape(layer: Labels, scans: list[Layer], verb: str = "save") -> Layer:
    """The open scan whose grid a layer without geometry belongs to, by shape.

    Raises :class:`GeometryError` naming the candidates when none or several
    (on different grids) match; ``verb`` ("save", "export") says what was refused.
    """
    shape = layer.data.shape
    matches = [scan for scan in scans if scan.data.shape[-3:] == shape]
    grids: list[tuple[Geometry, list[str]]] = []
    for scan in matches:
        geometry = layer_geometry(scan)
        group = next((names for grid, names in grids if grid.is_close(geometry)), None)
        if group is None:
            grids.append((geometry, [scan.name]))
        else:
            group.append(scan.name)
    size = " x ".join(str(n) for n in shape)
    if not grids:
        raise GeometryError(
            f'Cannot {verb} "{layer.name}": it has no position in the scanner (made without a '
            f"scale or transform) and no open scan is {size} voxels. Open the scan it was "
            f"drawn on with napari-medai and {verb} again, or draw labels with napari's "
            "'new labels' button on the scan."
        )
    if len(grids) > 1:
        names = ", ".join(f"'{names[0]}'" for _, names in grids)
        raise GeometryError(
            f'Cannot {verb} "{layer.name}": it has no position in the scanner, and several open '
            f"scans of {size} voxels lie on different grids ({names}). Close the scans it "
            f"was not drawn on and {verb} again."
        )
    return next(scan for scan in matches if scan.name == grids[0][1][0])


@dataclass
class ScanGrid:
    """A Labels layer as a label map on the grid it belongs to, and what that changed.

    ``scan`` is the layer whose grid was taken (None: the layer's own);
    ``infos`` and ``warnings`` say so in sentences, for notifications.
    """

    label_map: LabelMap
    scan: Layer | None = None
    infos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


_DONE = {"save": "Saved", "export": "Exported"}


def open_scans(layers: LayerList) -> list[Layer]:
    """The layers the reader or a model made: the grids a label layer may belong to."""
    return [layer for layer in layers if stored_geometry(layer) is not None]


def has_no_geometry(layer: Labels) -> bool:
    """Whether a 3D layer comes from a bare array: no stored grid, napari's identity transform."""
    return stored_geometry(layer) is None and world_geometry(layer).is_close(Geometry())


def on_scan(label_map: LabelMap, scan: Layer, done: str = "Saved") -> ScanGrid:
    """``label_map`` resampled (nearest neighbour) onto ``scan``'s grid, lost voxels counted.

    Refused when every labelled voxel lies outside the scan: the file would be
    empty. ``done`` ("Saved", "Exported") starts the sentences.
    """
    target, shape = layer_geometry(scan), scan.data.shape[-3:]
    if label_map.geometry.is_close(target) and label_map.spatial_shape == shape:
        return ScanGrid(label_map)
    name = label_map.metadata.get("name", "the labels")
    outside = labels_outside(label_map, target, shape)
    if outside and outside == np.count_nonzero(label_map.array):
        raise GeometryError(
            f"None of the {outside} labelled voxel(s) of \"{name}\" lie on '{scan.name}': "
            "pick the scan they were drawn on."
        )
    grid = ScanGrid(resample_label_map(label_map, target, shape), scan)
    grid.infos.append(f"{done} \"{name}\" resampled onto the grid of '{scan.name}'.")
    if outside:
        grid.warnings.append(
            f"{outside} labelled voxel(s) of \"{name}\" lie outside '{scan.name}' and are not "
            f"in the {done.lower()} file."
        )
    return grid


def labels_on_scan_grid(layer: Labels, scans: list[Layer], verb: str = "save") -> ScanGrid:
    """The label map of a 3D ``layer`` on the grid of the scan it was drawn on.

    A layer the reader or a model made keeps its grid; a bare array takes the
    grid of the open scan of its shape (or is refused); a drawn layer not on a
    scan's grid is resampled onto the scan it overlaps most. File > Save and
    the Export dock both go through here, so they never disagree.
    """
    done = _DONE[verb]
    label_map = label_map_from_layer(layer)
    if has_no_geometry(layer):
        scan = scan_of_shape(layer, scans, verb)
        label_map.geometry = layer_geometry(scan)
        grid = ScanGrid(label_map, scan)
        grid.infos.append(f"{done} \"{layer.name}\" on the grid of '{scan.name}' (same shape).")
        return grid
    if stored_geometry(layer) is not None:
        return ScanGrid(label_map)
    scan = reference_image(label_map, scans)
    return ScanGrid(label_map) if scan is None else on_scan(label_map, scan, done)


def labels_to_save(layer: Labels, scans: list[Layer]) -> tuple[LabelMap, dict[str, Any]]:
    """The label map to write for ``layer`` and the provenance of the grid chosen.

    Notifies the user when the grid comes from another layer and when labelled
    voxels fall outside it.
    """
    grid = labels_on_scan_grid(layer, scans)
    for info in grid.infos:
        show_info(info)
    for warning in grid.warnings:
        show_warning(warning)
    provenance = dict(layer.metadata.get(METADATA_KEY, {}).get("provenance", {}))
    if grid.scan is not None:
        scan = grid.scan
        provenance = {**_scan_provenance(scan), **provenance, "grid_from": scan.name}
    return grid.label_map, provenance


def _scan_provenance(scan: Layer) -> dict[str, Any]:
    return dict(scan.metadata.get(METADATA_KEY, {}).get("provenance", {}))
