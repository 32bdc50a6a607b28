"""Segmentation on napari layers: the image in, the result out as layers.

The outputs of one image and one model are tagged in their metadata, so a
second run finds them and replaces their data (keeping the user's colormap,
opacity and visibility) instead of adding more layers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer
from napari.types import LayerDataTuple
from napari.utils.colormaps import Colormap, DirectLabelColormap

from napari_medai._napari.label_edits import Overwrite, write_result
from napari_medai._napari.layers import (
    METADATA_KEY,
    image_layer_data,
    labels_layer_data,
    volume_from_layer,
)
from napari_medai._napari.segments import locked_labels
from napari_medai.core.errors import MedaiError
from napari_medai.core.segmentation.config import SegmentResult
from napari_medai.core.volume import Volume

#: Key under ``metadata[METADATA_KEY]`` naming which run an output layer belongs to.
OUTPUT_TAG = "segmentation"
#: Layer class for each layer type string of a LayerDataTuple.
_LAYER_TYPES: dict[str, type[Layer]] = {"labels": Labels, "image": Image}
#: Colours of predicted labels 1, 2, ... (cycled): bright hues that napari's
#: default colours for painted labels (brown, cyan, lilac, ...) do not use, so
#: a prediction never looks like the user's own paint.
PREDICTION_COLOURS = ("#ffd400", "#ff2bd6", "#7cfc00", "#ff4040", "#4d7cff", "#ffffff")
#: Outline width of predicted labels when shown as outlines (0: filled).
OUTLINE_WIDTH = 2
#: Display of the optional float maps, both in [0, 1]: transparent at 0 and
#: opaque at 1 (an alpha ramp with translucent blending), so a low probability
#: or a confident voxel leaves the scan as it was instead of tinting the slice.
_MAP_DISPLAY = {
    "probability": {
        "colormap": Colormap(
            [[1.0, 0.35, 0.0, 0.0], [1.0, 0.9, 0.1, 1.0]], name="medai probability"
        ),
        "blending": "translucent",
        "opacity": 0.8,
    },
    "uncertainty": {
        "colormap": Colormap(
            [[0.5, 0.0, 1.0, 0.0], [1.0, 0.3, 1.0, 1.0]], name="medai uncertainty"
        ),
        "blending": "translucent",
        "opacity": 0.8,
    },
}


def prediction_colormap(values: list[int]) -> DirectLabelColormap:
    """Labels colours for a prediction: :data:`PREDICTION_COLOURS` by value, 0 transparent."""
    colours: dict[int | None, Any] = {0: "transparent", None: PREDICTION_COLOURS[-1]}
    for value in values:
        if value:
            colours[int(value)] = PREDICTION_COLOURS[(int(value) - 1) % len(PREDICTION_COLOURS)]
    return DirectLabelColormap(color_dict=colours)


def prediction_display(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Labels layer kwargs shown in the prediction colours."""
    kwargs["colormap"] = prediction_colormap(list(kwargs["features"]["index"]))
    return kwargs


def show_outlines(layers: list[Layer], outlines: bool) -> None:
    """Draw the Labels among ``layers`` as outlines (or filled again)."""
    for layer in layers:
        if isinstance(layer, Labels):
            layer.contour = OUTLINE_WIDTH if outlines else 0


@dataclass(frozen=True)
class SegmentationTarget:
    """Which image and model a run used; its outputs are found again by these.

    ``image_id`` is the image layer's ``unique_id`` (survives renaming),
    ``model_source`` the registry name or path the model was loaded from.
    """

    image_id: str
    image_name: str
    model_source: str

    @classmethod
    def of(cls, image: Layer, model_source: str) -> SegmentationTarget:
        """The target for ``image`` segmented by the model at ``model_source``."""
        return cls(str(image.unique_id), image.name, str(model_source))

    def tag(self, output: str) -> dict[str, str]:
        """The metadata tag of this run's ``output`` ("labels", "probability", ...)."""
        return {"image": self.image_id, "model": self.model_source, "output": output}


def is_segmentable(layer: Layer) -> bool:
    """Whether ``layer`` is a greyscale 3D (or 4D channel) image held in memory."""
    return (
        isinstance(layer, Image) and not layer.rgb and not layer.multiscale and layer.ndim in (3, 4)
    )


def segmentation_input(layer: Layer) -> Volume:
    """The Volume behind an image layer, on the grid the layer is shown on."""
    if not is_segmentable(layer):
        raise MedaiError(
            f"layer '{layer.name}' cannot be segmented: pick a greyscale 3D image layer "
            "(not RGB, not multiscale)"
        )
    volume = volume_from_layer(layer)
    return replace(volume, metadata={**volume.metadata, "name": layer.name})


def _tagged(kwargs: dict[str, Any], tag: dict[str, str]) -> dict[str, Any]:
    kwargs["metadata"][METADATA_KEY][OUTPUT_TAG] = tag
    return kwargs


def result_layer_data(
    result: SegmentResult, target: SegmentationTarget, model_name: str
) -> list[LayerDataTuple]:
    """Layer tuples for a result: labels first, then the probability/uncertainty maps.

    Every layer is named "<image> – <model>" (plus the map's kind), lies on the
    result's grid (the image's) and keeps the run's provenance in
    ``metadata[METADATA_KEY]["provenance"]``. Labels are drawn in the
    prediction colours, the maps with an alpha ramp (see :data:`_MAP_DISPLAY`).
    """
    base = f"{target.image_name} – {model_name}"
    provenance = {**result.provenance, "image": target.image_name}
    labels = replace(result.labels, metadata=provenance)
    data, kwargs, kind = labels_layer_data(labels, base)
    prediction_display(kwargs)
    layers = [(data, _tagged(kwargs, target.tag("labels")), kind)]
    for output, volume in (
        ("probability", result.probability),
        ("uncertainty", result.uncertainty),
    ):
        if volume is None:
            continue
        data, kwargs, kind = image_layer_data(replace(volume, metadata=provenance))
        kwargs.update(name=f"{base} {output}", contrast_limits=(0.0, 1.0), **_MAP_DISPLAY[output])
        layers.append((data, _tagged(kwargs, target.tag(output)), kind))
    return layers


def find_output_layer(
    viewer: ViewerModel, tag: dict[str, str], kind: str, shape: tuple[int, ...]
) -> Layer | None:
    """The newest layer with ``tag`` that can take data of ``kind`` and ``shape``."""
    for layer in reversed(viewer.layers):
        info = layer.metadata.get(METADATA_KEY, {})
        if (
            info.get(OUTPUT_TAG) == tag
            and isinstance(layer, _LAYER_TYPES[kind])
            and tuple(np.shape(layer.data)) == tuple(shape)
        ):
            return layer
    return None


def _update(layer: Layer, data: np.ndarray, kwargs: dict[str, Any]) -> None:
    """Replace a layer's data, grid and metadata; its display settings stay the user's.

    A Labels layer on the same grid takes the new result as one undoable step,
    so Ctrl+Z gives back what it held, the user's corrections included. On
    another grid (or in a type too small) the data is swapped, and the old
    undo history, which refers to the old voxels, is dropped.
    """
    same_grid = np.allclose(layer.affine.affine_matrix, kwargs["affine"])
    if isinstance(layer, Labels) and same_grid and _fits(layer, data):
        write_result(layer, data, Overwrite.REPLACE, locked=locked_labels(layer))
    else:
        if not same_grid:
            layer.affine = kwargs["affine"]
        layer.data = data
        if isinstance(layer, Labels):
            layer._reset_history()  # napari has no public call; its strokes were on the old data
    # After the write, whose paint event would otherwise mark the model's own result edited.
    layer.metadata = {**layer.metadata, **kwargs["metadata"]}
    if "features" in kwargs:
        layer.features = kwargs["features"]


def _fits(layer: Labels, data: np.ndarray) -> bool:
    """Whether ``data`` can be written into ``layer``'s array as it is."""
    held = np.asarray(layer.data)
    return (
        held.shape == data.shape
        and np.issubdtype(held.dtype, np.integer)
        and int(data.max(initial=0)) <= np.iinfo(held.dtype).max
        and int(data.min(initial=0)) >= np.iinfo(held.dtype).min
    )


def _mark_edited(layer: Labels, _event: Any = None) -> None:
    """Record that the user painted on a model's mask (DICOM-SEG calls it SEMIAUTOMATIC)."""
    info = layer.metadata.get(METADATA_KEY, {})
    provenance = info.get("provenance")
    if provenance is not None and not provenance.get("edited"):
        info["provenance"] = {**provenance, "edited": True}


def show_segmentation(
    viewer: ViewerModel, layer_data: list[LayerDataTuple], new_layer: bool = False
) -> list[Layer]:
    """Put result layers into ``viewer``: update this run's earlier outputs, or add.

    With ``new_layer`` every output becomes a new layer. Returns the layers
    shown, in the order of ``layer_data``.
    """
    shown = []
    for data, kwargs, kind in layer_data:
        tag = kwargs["metadata"][METADATA_KEY][OUTPUT_TAG]
        existing = None if new_layer else find_output_layer(viewer, tag, kind, data.shape)
        if existing is None:
            existing = viewer.add_layer(Layer.create(data, kwargs, kind))
            if isinstance(existing, Labels):
                existing.events.paint.connect(partial(_mark_edited, existing))
        else:
            _update(existing, data, kwargs)
        shown.append(existing)
    return shown
