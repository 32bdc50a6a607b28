"""Export and evaluation inputs from napari layers: label maps, their scan, provenance, colours.

A Labels layer drawn on a scan is exported on that scan's grid (resampled with
nearest neighbour if it is not on it). The scan's DICOM source path, which the
reader keeps in ``metadata["napari_medai"]["source_path"]`` (in memory only,
never written to a sidecar), lets DICOM-SEG and RTSTRUCT reference the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_medai._napari.layers import METADATA_KEY, label_map_from_layer, layer_geometry
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


def export_input(labels: Labels, image: Image | None) -> ExportInput:
    """The label map on ``image``'s grid, with provenance, colours and the DICOM source."""
    label_map = labels_snapshot(labels)
    if image is not None:
        if image.ndim not in (3, 4) or labels.ndim != 3:
            raise ExportError("export needs a 3D label layer and a 3D scan")
        from napari_medai.core.resample import resample_label_map  # scipy: not at dock start

        label_map = resample_label_map(label_map, layer_geometry(image), image.data.shape[-3:])
    info = labels.metadata.get(METADATA_KEY, {})
    provenance = dict(info.get("provenance", {}))
    label_map.metadata["name"] = labels.name
    values = [int(v) for v in np.unique(label_map.array) if v != 0]
    colors = {v: tuple(float(c) for c in labels.get_color(v)) for v in values}
    image_info = image.metadata.get(METADATA_KEY, {}) if image is not None else {}
    series_uid = image_info.get("provenance", {}).get("series_uid") or None
    return ExportInput(label_map, provenance, source_path(image), series_uid, colors)
