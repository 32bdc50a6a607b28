"""Export and evaluation inputs from napari layers: label maps, their scan, provenance, colours.

A Labels layer is exported on the grid of the scan picked in the Export dock
(resampled with nearest neighbour if it is not on it). Where that grid comes
from follows File > Save's rule (:func:`~napari_medai._napari.scan_grid.labels_on_scan_grid`):
a layer made from a bare array takes the grid of the open scan of its shape or
is refused, never exported at origin 0 with 1 mm voxels. The scan's DICOM
source path, which the reader keeps in ``metadata["napari_medai"]["source_path"]``
(in memory only, never written to a sidecar), lets DICOM-SEG and RTSTRUCT
reference the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer

from napari_medai._napari.layers import METADATA_KEY, label_map_from_layer
from napari_medai._napari.scan_grid import ScanGrid, has_no_geometry, labels_on_scan_grid, on_scan
from napari_medai.core.errors import ExportError
from napari_medai.core.volume import LabelMap

#: Key under ``metadata[METADATA_KEY]`` holding the path the scan was read from.
SOURCE_PATH_KEY = "source_path"


@dataclass
class ExportInput:
    """What :func:`export_job` needs, taken from the layers at the moment Export is pressed."""

    label_map: LabelMap
    provenance: dict[str, Any]
    source: Path | None = None
    series_uid: str | None = None
    colors: dict[int, tuple[float, ...]] = field(default_factory=dict)
    #: What taking the scan's grid changed, in sentences (for the user, after the export).
    infos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def source_path(layer: Image | None) -> Path | None:
    """The file or DICOM folder/zip an image layer was read from, if the reader recorded it."""
    if layer is None:
        return None
    value = layer.metadata.get(METADATA_KEY, {}).get(SOURCE_PATH_KEY)
    return Path(value) if value else None


def is_dicom_source(layer: Image | None) -> bool:
    """Whether the image came from a DICOM series (it has a SeriesInstanceUID)."""
    if layer is None:
        return False
    provenance = layer.metadata.get(METADATA_KEY, {}).get("provenance", {})
    return bool(provenance.get("series_uid")) and source_path(layer) is not None


def labels_snapshot(labels: Labels) -> LabelMap:
    """The layer as a label map holding a copy of its data (later painting cannot race)."""
    label_map = label_map_from_layer(labels)
    label_map.array = np.array(label_map.array, copy=True)
    return label_map


def export_input(labels: Labels, image: Image | None, scans: list[Layer]) -> ExportInput:
    """The label map on ``image``'s grid, with provenance, colours and the DICOM source.

    ``scans`` are the open scans a layer without a grid of its own may belong
    to; with no ``image`` picked, the grid is the one File > Save would take.
    """
    for layer, wanted in ((labels, (3,)), (image, (3, 4))):
        if layer is not None and layer.ndim not in wanted:
            raise ExportError(
                f"'{layer.name}' is {layer.ndim}D: export needs a 3D label layer and a 3D scan"
            )
    grid = scan_grid(labels, image, scans)
    label_map = grid.label_map
    # A copy: painting after Export is pressed must not race the export's thread.
    label_map.array = np.array(label_map.array, copy=True)
    info = labels.metadata.get(METADATA_KEY, {})
    provenance = dict(info.get("provenance", {}))
    values = [int(v) for v in np.unique(label_map.array) if v != 0]
    colors = {v: tuple(float(c) for c in labels.get_color(v)) for v in values}
    image_info = image.metadata.get(METADATA_KEY, {}) if image is not None else {}
    series_uid = image_info.get("provenance", {}).get("series_uid") or None
    return ExportInput(
        label_map, provenance, source_path(image), series_uid, colors, grid.infos, grid.warnings
    )


def scan_grid(labels: Labels, image: Image | None, scans: list[Layer]) -> ScanGrid:
    """``labels`` on ``image``'s grid; without ``image``, on the grid File > Save would take.

    A bare array of ``image``'s shape is taken to lie on it; one of another
    shape takes the grid of the open scan of its shape first (or is refused).
    """
    if image is None:
        return labels_on_scan_grid(labels, scans, "export")
    if has_no_geometry(labels):
        fits = image.data.shape[-3:] == labels.data.shape
        grid = labels_on_scan_grid(labels, [image] if fits else scans, "export")
    else:
        grid = ScanGrid(label_map_from_layer(labels))
    moved = on_scan(grid.label_map, image, "Exported")
    if moved.scan is None:
        return grid
    moved.infos = grid.infos + moved.infos
    moved.warnings = grid.warnings + moved.warnings
    return moved
