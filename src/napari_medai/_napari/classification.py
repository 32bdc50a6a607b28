"""Classification on napari layers: boxes from Shapes/Points in, results onto layers.

Boxes drawn in a Shapes layer (or points plus a box size) are converted through
world coordinates into voxel boxes of the image, so a box lands on the same
anatomy whatever transforms the two layers carry. Results go into the box
layer's ``features`` (class, probability) and its on-canvas text; the Grad-CAM
map becomes an image layer on the scan's grid, found again and updated by the
next run of the same image and model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.types import LayerDataTuple

from napari_medai._napari.layers import METADATA_KEY, image_layer_data, label_map_from_layer
from napari_medai.core.classification.config import ClassificationError, ClassifyResult, Region
from napari_medai.core.classification.heldout import HeldOutSet
from napari_medai.core.volume import LabelMap

if TYPE_CHECKING:
    import pandas as pd

CAM_DISPLAY = {"colormap": "inferno", "blending": "additive", "opacity": 0.5}
#: ``layer.metadata`` key set when the ``class`` feature holds our predictions.
PREDICTIONS_KEY = "napari_medai_predictions"
TEXT = {
    "string": "{class} {probability:.2f}",
    "color": "yellow",
    "size": 10,
    "anchor": "upper_left",
}


def _to_image_index(points: np.ndarray, source: Layer, image: Image) -> np.ndarray:
    """(N, 3) data coordinates of ``source`` as voxel coordinates of ``image``."""
    return np.array([image.world_to_data(source.data_to_world(p)) for p in points])[:, -3:]


def regions_from_shapes(shapes: Shapes, image: Image) -> list[Region]:
    """Each shape's bounding box on the image's voxel grid (a 2D box on its slice)."""
    if len(shapes.data) == 0:
        raise ClassificationError(f"the Shapes layer '{shapes.name}' holds no boxes; draw some")
    regions = []
    for number, vertices in enumerate(shapes.data, 1):
        if vertices.shape[1] < 3:
            raise ClassificationError(
                f"box {number} of '{shapes.name}' is 2D; draw boxes on the 3D scan"
            )
        corners = _to_image_index(vertices, shapes, image)
        z = np.round(corners[:, 0])
        if np.ptp(z) > 0:
            raise ClassificationError(f"box {number} of '{shapes.name}' spans several slices")
        low = np.floor(corners.min(0) + 0.5).astype(int)
        high = np.floor(corners.max(0) + 0.5).astype(int)
        regions.append(
            Region((int(z[0]), *low[1:]), (int(z[0]) + 1, *np.maximum(high, low + 1)[1:]))
        )
    return regions


def regions_from_points(points: Points, image: Image, size: tuple[int, int]) -> list[Region]:
    """A ``size`` (rows, columns) box around each point, on the point's slice."""
    if len(points.data) == 0:
        raise ClassificationError(f"the Points layer '{points.name}' holds no points; add some")
    centres = _to_image_index(np.asarray(points.data), points, image)
    return [Region.around(tuple(c), (1, *size)) for c in centres]


def result_table(result: ClassifyResult) -> pd.DataFrame:
    """One row per input: its number, class, probability, then every class's probability."""
    what = {"volume": "scan", "slices": f"slice ({'zyx'[result.axis]})", "regions": "box"}
    rows: dict[str, Any] = {
        what[result.scope]: [
            p.index if result.scope == "slices" else p.index + 1 for p in result.predictions
        ],
        "class": [p.name for p in result.predictions],
        "probability": [round(p.probability, 4) for p in result.predictions],
    }
    for label, name in sorted(result.class_names.items()):
        rows[f"p({name})"] = [round(p.probabilities[label], 4) for p in result.predictions]
    import pandas as pd  # 0.3 s of import, not at dock start

    return pd.DataFrame(rows)


def annotate_layer(layer: Shapes | Points, result: ClassifyResult) -> None:
    """Write the results into the box layer's features and show them as text on the canvas.

    The predicted class goes to the ``class`` column, unless the user's own
    classes are there (training examples): then it goes to ``predicted``, so
    nothing the user entered is overwritten.
    """
    table = result_table(result).iloc[:, 1:]
    if len(table) != len(layer.data):
        raise ClassificationError(
            f"'{layer.name}' now holds {len(layer.data)} boxes, the run classified {len(table)}; "
            "run again"
        )
    ours = layer.metadata.get(PREDICTIONS_KEY, False)
    column = "class" if ours or "class" not in layer.features else "predicted"
    table = table.rename(columns={"class": column})
    existing = layer.features.drop(columns=[c for c in table if c in layer.features])
    import pandas as pd

    layer.features = pd.concat([existing.reset_index(drop=True), table], axis=1)
    layer.metadata = {**layer.metadata, PREDICTIONS_KEY: column == "class"}
    layer.text = {**TEXT, "string": f"{{{column}}} {{probability:.2f}}"}


def box_classes(layer: Shapes | Points) -> list[str]:
    """Each box's class name from the layer's ``class`` feature (not our predictions)."""
    if "class" not in layer.features or layer.metadata.get(PREDICTIONS_KEY):
        raise ClassificationError(
            f"the boxes of '{layer.name}' carry no class: give each one a 'class' feature "
            "(e.g. liver, other) to train or evaluate on them"
        )
    return [str(v) for v in layer.features["class"]]


def class_labels(layer: Shapes | Points) -> tuple[list[int], dict[int, str]]:
    """Each box's class number from the layer's ``class`` feature, and the class names.

    Names are sorted, so the same names always get the same numbers.
    """
    values = box_classes(layer)
    names = sorted(set(values))
    if len(names) < 2:
        raise ClassificationError(
            f"the boxes of '{layer.name}' all have class {names[0]!r}; a classifier needs examples "
            "of at least two classes"
        )
    return [names.index(v) for v in values], dict(enumerate(names))


def cam_layer_data(
    result: ClassifyResult, image: Image, model_source: str, model_name: str
) -> LayerDataTuple:
    """The heat map as an image layer tuple on the scan's grid, tagged for updating.

    Tagged like segmentation outputs, so ``show_segmentation`` updates the
    earlier map of the same image and model instead of adding another layer.
    """
    # Imported here: the segmentation module loads torch, which a dock must not at start.
    from napari_medai._napari.segmentation import OUTPUT_TAG, SegmentationTarget

    target = SegmentationTarget.of(image, model_source)
    if result.cam is None:
        raise ClassificationError("this run made no heat map")
    provenance = {**result.provenance, "image": target.image_name}
    data, kwargs, kind = image_layer_data(replace(result.cam, metadata=provenance))
    kwargs.update(
        name=f"{target.image_name} – {model_name} Grad-CAM",
        contrast_limits=(0.0, 1.0),
        **CAM_DISPLAY,
    )
    kwargs["metadata"][METADATA_KEY][OUTPUT_TAG] = target.tag("cam")
    return data, kwargs, kind


def _parse_values(text: str) -> tuple[list[int], dict[int, str]]:
    """Label values and the names typed with them: ``"5"``, ``"1, 2"`` or ``"2=kidney"``."""
    values: list[int] = []
    names: dict[int, str] = {}
    for part in text.split(","):
        numbers, named, name = part.partition("=")
        try:
            found = [int(v) for v in numbers.split()]
        except ValueError:
            raise ClassificationError(
                f"label values must be whole numbers such as '5', '1, 2' or '2=kidney', "
                f"not {text!r}"
            ) from None
        if named:
            if len(found) != 1 or not name.strip():
                raise ClassificationError(
                    f"name one label value at a time, as in '2=kidney', not {part.strip()!r}"
                )
            names[found[0]] = name.strip()
        values += found
    return values, names


def _feature_names(labels: Labels) -> dict[int, str]:
    """Label names from the layer's napari features table (``index`` and ``name`` columns)."""
    features = labels.features
    if not {"index", "name"} <= set(features.columns):
        return {}
    pairs = zip(features["index"], features["name"])
    return {int(value): name for value, name in pairs if isinstance(name, str) and name}


def label_values(labels: Labels, text: str) -> list[int]:
    """The label values a slice is classified by: ``text``'s, or every one present."""
    values, _names = _parse_values(text)
    present = {int(v) for v in np.unique(np.asarray(labels.data))} - {0}
    if not values:
        values = sorted(present)
    if not values:
        raise ClassificationError(f"the Labels layer '{labels.name}' holds no labels; paint some")
    missing = [v for v in values if v not in present]
    if missing:
        raise ClassificationError(
            f"the Labels layer '{labels.name}' holds no label {missing[0]}; it holds "
            f"{', '.join(map(str, sorted(present))) or 'none'}"
        )
    return values


def named_label_map(labels: Labels, text: str) -> LabelMap:
    """The layer's label map, its values named as typed (``2=kidney``), else by the layer.

    The names become the classes' names ("kidney" / "not kidney"), never "label 2"
    where a name is known.
    """
    label_map = label_map_from_layer(labels)
    typed = _parse_values(text)[1]
    label_map.label_names = {**_feature_names(labels), **label_map.label_names, **typed}
    return label_map


def held_out_slices(
    image: Image, labels: Labels, values_text: str, axis: int, slices: list[int] | None
) -> HeldOutSet:
    """The slices of ``image`` labelled by ``labels`` (``values_text`` as in training)."""
    values = label_values(labels, values_text)
    label_map = named_label_map(labels, values_text)
    return HeldOutSet(image.name, labels.name, label_map, values, axis, slices=slices)


def held_out_boxes(
    image: Image, layer: Shapes | Points, regions: list[Region], slices: list[int] | None
) -> HeldOutSet:
    """The boxes of ``layer`` (voxel ``regions`` of ``image``) with their ``class`` feature."""
    return HeldOutSet(
        image.name, layer.name, regions=regions, classes=box_classes(layer), slices=slices
    )
