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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.types import LayerDataTuple

from napari_medai._napari.layers import METADATA_KEY, image_layer_data, label_map_from_layer
from napari_medai.core import catalogue
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifyConfig,
    ClassifyResult,
    Region,
)
from napari_medai.core.classification.heldout import HeldOutSet
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.volume import Volume

if TYPE_CHECKING:
    import pandas as pd

    from napari_medai.core.models.loaded import LoadedModel

#: Share of the progress bar given to loading the model.
_LOADING_SHARE = 0.05
#: Classifier training runs in a worker process, off napari's GIL (see core/job_process.py).
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


def _loaded(source: str, trusted: bool) -> Job[LoadedModel]:
    """The first step of a job: load the model (torch and MONAI come in with it)."""
    from napari_medai.core.models.sources import load_model

    yield Progress(0.0, f"loading model {Path(source).name or source}")
    model = load_model(source, trusted=trusted)
    yield Progress(_LOADING_SHARE, f"loaded {model.name}")
    return model


def load_and_classify_job(
    source: str,
    trusted: bool,
    volume: Volume,
    config: ClassifyConfig,
    regions: list[Region] | None = None,
) -> Job[tuple[LoadedModel, ClassifyResult]]:
    """Load the model, then classify; both in the job so a slow load never blocks the GUI."""
    from napari_medai.core.classification.inference import classify_job

    model = yield from _loaded(source, trusted)
    job = classify_job(volume, model, config, regions)
    result = yield from scaled(job, _LOADING_SHARE, 1.0)
    return model, result


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


def train_from_boxes_job(
    volume: Volume,
    regions: list[Region],
    layer: Shapes | Points,
    config: Any,
    held_out: list[int] | None = None,
) -> Job[Any]:
    """Train a classifier on the boxes' classes (``config``: a ClassifierTrainConfig).

    Boxes on the ``held_out`` slices (z) are left out, for Evaluate to score on.
    """
    from napari_medai.core.classification.examples import examples_from_regions

    labels, names = class_labels(layer)
    skipped = set(held_out or [])
    keep = [n for n, r in enumerate(regions) if r.start[0] not in skipped]
    if not keep:
        raise ClassificationError(
            f"every box of '{layer.name}' lies on a held-out slice; leave some to train on"
        )
    yield Progress(0.0, "reading the boxes")
    regions, labels = [regions[n] for n in keep], [labels[n] for n in keep]
    examples = examples_from_regions(volume, regions, labels, names)
    return (yield from catalogue.TRAIN_CLASSIFIER(examples, config))


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


def label_values(labels: Labels, text: str) -> list[int]:
    """The label values a slice is classified by: ``text`` ("5" or "1, 2"), or every one present."""
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ClassificationError(
            f"label values must be whole numbers such as '5' or '1, 2', not {text!r}"
        ) from None
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


def train_from_label_slices_job(
    volume: Volume,
    labels: Labels,
    values: list[int],
    axis: int,
    config: Any,
    held_out: list[int] | None = None,
) -> Job[Any]:
    """Train on every slice along ``axis`` but the ``held_out`` ones, class k when it holds k."""
    from napari_medai.core.classification.examples import examples_from_label_slices

    label_map = label_map_from_layer(labels)
    skipped = set(held_out or [])
    kept = [i for i in range(volume.spatial_shape[axis]) if i not in skipped]
    if not kept:
        raise ClassificationError("every slice is held out; leave some to train on")
    yield Progress(0.0, "reading the slices")
    examples = examples_from_label_slices(volume, label_map, values, axis, slices=kept)
    return (yield from catalogue.TRAIN_CLASSIFIER(examples, config))


def held_out_slices(
    image: Image, labels: Labels, values_text: str, axis: int, slices: list[int] | None
) -> HeldOutSet:
    """The slices of ``image`` labelled by ``labels`` (``values_text`` as in training)."""
    values = label_values(labels, values_text)
    label_map = label_map_from_layer(labels)
    return HeldOutSet(image.name, labels.name, label_map, values, axis, slices=slices)


def held_out_boxes(
    image: Image, layer: Shapes | Points, regions: list[Region], slices: list[int] | None
) -> HeldOutSet:
    """The boxes of ``layer`` (voxel ``regions`` of ``image``) with their ``class`` feature."""
    return HeldOutSet(
        image.name, layer.name, regions=regions, classes=box_classes(layer), slices=slices
    )


def load_and_evaluate_job(
    source: str, trusted: bool, volume: Volume, picked: HeldOutSet, device: str
) -> Job[dict[str, Any]]:
    """Load the model, then score it on the picked examples; returns the metrics dict."""
    from napari_medai.core.classification.evaluation import evaluate_job

    model = yield from _loaded(source, trusted)
    job = evaluate_job(model, volume, picked, device)
    return (yield from scaled(job, _LOADING_SHARE, 1.0))
