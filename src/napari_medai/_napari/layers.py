"""Convert volumes to napari layer data and napari layers back to volumes.

A layer made here carries its geometry and provenance in
``layer.metadata["napari_medai"]``, so export and training never re-derive them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.types import LayerDataTuple

from napari_medai.core.geometry import WORLD_AXIS_LABELS, Geometry
from napari_medai.core.volume import LabelMap, Volume
from napari_medai.core.windows import display_defaults

#: Where a drawn layer (no plugin metadata) keeps its label names and segment fields.
DRAWN_SEGMENTS_KEY = "napari_medai_segments"
METADATA_KEY = "napari_medai"


def _medai_metadata(volume: Volume, **extra: Any) -> dict[str, Any]:
    return {
        METADATA_KEY: {
            "geometry": volume.geometry.to_dict(),
            "shape": list(volume.spatial_shape),
            "provenance": dict(volume.metadata),
            **extra,
        }
    }


def _spatial_kwargs(volume: Volume) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "affine": volume.geometry.affine(),
        "units": ("mm", "mm", "mm"),
        "axis_labels": WORLD_AXIS_LABELS,
    }
    if volume.array.ndim == 4:
        # A leading time axis is its own dimension with unit steps.
        affine = np.eye(5)
        affine[1:, 1:] = kwargs["affine"]
        axis = volume.metadata.get("channel_axis_name", "t")
        kwargs.update(
            affine=affine,
            units=("pixel", "mm", "mm", "mm"),
            axis_labels=(axis, *WORLD_AXIS_LABELS),
        )
    return kwargs


def image_layer_data(volume: Volume) -> LayerDataTuple:
    """An Image layer tuple with the volume's affine and display defaults."""
    kwargs = {
        "name": volume.metadata.get("name", "image"),
        "metadata": _medai_metadata(volume),
        **_spatial_kwargs(volume),
        **display_defaults(volume),
    }
    return (volume.array, kwargs, "image")


def labels_layer_data(label_map: LabelMap, name: str | None = None) -> LayerDataTuple:
    """A Labels layer tuple on the label map's grid, with label names as features."""
    values = sorted(set(label_map.label_names) | {0})
    kwargs = {
        "name": name or label_map.metadata.get("name", "labels"),
        "metadata": _medai_metadata(
            label_map, label_names={str(k): v for k, v in label_map.label_names.items()}
        ),
        "features": {
            "index": values,
            "name": [label_map.label_names.get(v, str(v)) for v in values],
        },
        **_spatial_kwargs(label_map),
    }
    return (label_map.array, kwargs, "labels")


def stored_geometry(layer: Layer) -> Geometry | None:
    """The geometry the reader stored on ``layer``, if it has one."""
    info = layer.metadata.get(METADATA_KEY)
    geometry = info.get("geometry") if info else None
    return Geometry.from_dict(geometry) if geometry else None


def world_geometry(layer: Layer) -> Geometry:
    """The grid ``layer`` is displayed on, from napari's own data-to-world map.

    This covers layers made by napari's "new labels" button, which copy the
    active image's transform but not its metadata.
    """
    if layer.ndim < 3:
        raise ValueError(f"layer {layer.name!r} is {layer.ndim}D; a 3D grid is needed")
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)))
    columns = [np.asarray(layer.data_to_world(np.eye(ndim)[axis])) - origin for axis in range(ndim)]
    affine = np.eye(4)
    affine[:3, :3] = np.stack(columns, axis=1)[-3:, -3:]
    affine[:3, 3] = origin[-3:]
    return Geometry.from_affine(affine)


def layer_geometry(layer: Layer) -> Geometry:
    """The layer's grid: the stored one, unless the user has since moved the layer.

    The stored geometry keeps the file's exact numbers; napari's transform is
    the truth for anything drawn, so it wins when the two disagree.
    """
    displayed = world_geometry(layer)
    stored = stored_geometry(layer)
    return stored if stored is not None and stored.is_close(displayed) else displayed


def volume_from_layer(layer: Image) -> Volume:
    """The Volume behind an Image layer."""
    info = layer.metadata.get(METADATA_KEY, {})
    geometry = layer_geometry(layer)
    return Volume(np.asarray(layer.data), geometry, dict(info.get("provenance", {})))


def label_map_from_layer(layer: Labels) -> LabelMap:
    """The LabelMap behind a Labels layer, keeping its label names and segment fields.

    A layer the plugin made keeps them under :data:`METADATA_KEY`; one drawn with
    napari's "new labels" button under :data:`DRAWN_SEGMENTS_KEY` (an entry under
    ``METADATA_KEY`` would claim a stored grid it does not have).
    """
    info = layer.metadata.get(METADATA_KEY) or layer.metadata.get(DRAWN_SEGMENTS_KEY, {})
    names = {int(k): v for k, v in info.get("label_names", {}).items()}
    segments = {int(k): dict(v) for k, v in info.get("segments", {}).items()}
    geometry = layer_geometry(layer)
    data = np.asarray(layer.data)
    return LabelMap(data, geometry, {"name": layer.name, "segments": segments}, names)
