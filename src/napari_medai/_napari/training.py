"""napari side of the annotate-train-predict-correct loop.

Turns layers into training pairs (on a copy of the painted labels, so
training never touches the annotation layer), shows a prediction as a Labels
layer on the image's grid, copies the user's corrections back into the
annotation layer, and moves the viewer to a chosen slice.

Corrections rule: the prediction layer's array as predicted is kept; the
planes the user has edited since then (found with the trainer's own
:func:`~napari_medai.core.training.annotations.painted_planes`, so a stroke in
an axial, coronal or sagittal view yields that one plane) are copied whole into
the annotation layer. A copied plane then counts as fully annotated for the
next round: its zeros are background there. A plane the user only looked at
and found correct is accepted explicitly with :meth:`Review.accept_slice`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_medai._napari.label_edits import Overwrite, write_result
from napari_medai._napari.layers import (
    METADATA_KEY,
    label_map_from_layer,
    labels_layer_data,
    layer_geometry,
    volume_from_layer,
)
from napari_medai._napari.prompting import PREVIEW_SUFFIX
from napari_medai._napari.segmentation import (
    OUTPUT_TAG,
    prediction_display,
    show_segmentation,
)
from napari_medai._napari.segments import locked_labels
from napari_medai.core import catalogue
from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.jobs import Job
from napari_medai.core.models.card import CARD_FILE, ModelCard
from napari_medai.core.models.registry import drafts_dir, keep_model, user_model_dir
from napari_medai.core.segmentation.config import SegmentResult
from napari_medai.core.training.annotations import ANNOTATED_SLICES, AXIS_NAMES, painted_planes
from napari_medai.core.training.config import TrainConfig, TrainResult
from napari_medai.core.training.quality import TrainingQuality
from napari_medai.core.volume import LabelMap, Volume

#: The prediction layer of image "CT" is called "CT – prediction".
PREDICTION_SUFFIX = " – prediction"


def is_annotation_layer(layer: object) -> bool:
    """Whether ``layer`` can hold annotations to train on: a 3D Labels layer that is not
    the Prompt dock's preview (an object proposed, not yet committed by the user)."""
    return isinstance(layer, Labels) and layer.ndim == 3 and not layer.name.endswith(PREVIEW_SUFFIX)


def prompted_slices(labels: Labels, array: np.ndarray) -> list[int]:
    """The axial slices spanned by objects committed from the Prompt dock into ``labels``.

    Each committed object records its first and last slice; every slice between
    them was looked at whole (the preview showed the object there, or showed it
    absent), so it is annotated completely, as a painted slice is. An object
    whose label is no longer in ``array`` (the commit was undone, or the label
    erased) declares nothing.
    """
    prompted = labels.metadata.get(METADATA_KEY, {}).get("prompted", {})
    slices: set[int] = set()
    for value, record in prompted.items():
        if np.any(array == int(value)):
            first, last = (int(z) for z in record["slices"])
            slices.update(range(max(first, 0), min(last, array.shape[0] - 1) + 1))
    return sorted(slices)


def training_pair(
    image: Image, labels: Labels, names: dict[int, str] | None = None
) -> tuple[Volume, LabelMap]:
    """The pair to train on: the scan and a snapshot of the labels painted so far.

    The label array is copied, so the user may keep painting while training
    runs and training can never write into the layer. ``names`` (label value
    to name) override the names the layer carries. The slices of objects
    committed from the Prompt dock are declared annotated (see
    :func:`prompted_slices`).
    """
    label_map = label_map_from_layer(labels)
    label_names = {**label_map.label_names, **(names or {})}
    array = np.array(label_map.array, copy=True)
    metadata = {**label_map.metadata, ANNOTATED_SLICES: prompted_slices(labels, array)}
    pair = replace(label_map, array=array, label_names=label_names, metadata=metadata)
    return volume_from_layer(image), pair


def parse_label_names(text: str) -> dict[int, str]:
    """Label names typed by the user: "liver" or "liver, spleen" (labels 1, 2, ...),
    or "1: liver, 3: kidney" with explicit values."""
    names: dict[int, str] = {}
    for number, part in enumerate((p.strip() for p in text.split(",") if p.strip()), start=1):
        value, sep, name = part.partition(":")
        if sep and value.strip().isdigit():
            names[int(value)] = name.strip()
        elif sep:
            raise MedaiError(f"label names: '{part}' should look like '1: liver'")
        else:
            names[number] = part
    if any(not name for name in names.values()) or 0 in names:
        raise MedaiError("label names: give a name for each label value from 1 up")
    return names


def _slug(name: str) -> str:
    """A folder name made from a model name ("Liver v2" -> "liver-v2")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_output_dir(name: str = "", now: float | None = None) -> Path:
    """A new folder among the drafts for the next model, named after it or by the date.

    The name is free both among the drafts and among the kept models (a
    number is added when needed); it never names the scan.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = drafts_dir() / (_slug(name) or f"trained-{stamp}")
    path, number = base, 1

    def taken(candidate: Path) -> bool:
        kept = user_model_dir() / candidate.name
        return any(
            p.exists() or p.with_name(p.name + ".checkpoints").exists() for p in (candidate, kept)
        )

    while taken(path):
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


@dataclass(frozen=True)
class TrainingReport:
    """What to tell the user after training, and whether the model joined the list."""

    model: Path
    card: ModelCard
    quality: TrainingQuality
    listed: bool
    message: str


def finish_training(out_dir: Path, stopped: bool) -> TrainingReport:
    """Judge the model saved in ``out_dir``; a good draft joins the model list at once.

    A model that is not ready (see :class:`TrainingQuality`) stays among the
    drafts, reported plainly; :func:`keep_model` adds it when the user keeps it.
    """
    card = ModelCard.read(out_dir / CARD_FILE)
    quality = TrainingQuality.of(card)
    is_draft = out_dir.parent == drafts_dir()
    ended = "Stopped" if stopped else "Trained"
    if not quality.ready:
        where = " It is not in the model list; Keep adds it anyway." if is_draft else ""
        message = f"{ended}: '{card.name}' is not ready: {quality.problem}.{where}"
        return TrainingReport(out_dir, card, quality, False, message)
    model = keep_model(out_dir) if is_draft else out_dir
    listed = model.parent == user_model_dir()
    where = "in the model list" if listed else f"saved in {model}"
    message = f"{ended}: '{card.name}', {quality.summary}, {where}."
    return TrainingReport(model, card, quality, listed, message)


def prediction_layer_name(image: Image) -> str:
    """Name of the prediction layer that belongs to ``image``."""
    return f"{image.name}{PREDICTION_SUFFIX}"


def show_prediction(viewer: ViewerModel, image: Image, labels: LabelMap) -> Labels:
    """Put ``labels`` into the image's prediction layer, adding it the first time.

    The layer is found again by a tag naming the image (not by its name, which
    the user may change); a re-run replaces its data, grid and metadata and
    keeps its display settings. ``labels`` is on the image's grid (inference
    maps its output back there).
    """
    data, kwargs, kind = labels_layer_data(labels, prediction_layer_name(image))
    prediction_display(kwargs)
    kwargs["metadata"][METADATA_KEY][OUTPUT_TAG] = {
        "image": str(image.unique_id),
        "output": "prediction",
    }
    [layer] = show_segmentation(viewer, [(data, kwargs, kind)])
    return layer


def train_job(pairs: list[tuple[Volume, LabelMap]], config: TrainConfig) -> Job[TrainResult]:
    """:func:`napari_medai.core.training.trainer.train_job`, run in a worker process.

    In a thread of napari's process, importing torch and every optimizer
    step's Python code hold the GIL and stall the GUI; in a worker process
    (kept for the next run, so torch loads once) they cannot. The pairs are
    the snapshot :func:`training_pair` took; the model lands in
    ``config.out_dir`` as before.
    """
    return (yield from catalogue.TRAIN_SEGMENTATION(pairs, config))


def predict_job(
    model: Path, volume: Volume, annotation: np.ndarray
) -> Job[tuple[SegmentResult, list[int]]]:
    """:func:`~napari_medai.core.segmentation.review.predict_for_review_job` in the worker process.

    The process that trained the model has torch loaded already, so the
    first prediction imports nothing into napari's process either.
    """
    return (yield from catalogue.PREDICT_FOR_REVIEW(model, volume, annotation))


def _check_same_grid(prediction: Labels, annotation: Labels) -> None:
    if prediction.data.shape != annotation.data.shape or not layer_geometry(prediction).is_close(
        layer_geometry(annotation), tol=1e-3
    ):
        raise GeometryError(
            f"the annotation layer '{annotation.name}' is not on the grid of "
            f"'{prediction.name}'; pick the labels painted on the predicted image"
        )


def _plane_mask(shape: tuple[int, ...], planes: list[np.ndarray]) -> np.ndarray:
    mask = planes[0][:, None, None] | planes[1][None, :, None] | planes[2][None, None, :]
    return np.broadcast_to(mask, shape)


def _copy_planes(prediction: Labels, annotation: Labels, planes: list[np.ndarray]) -> None:
    """Make the annotation equal the prediction on ``planes`` (undoable in napari)."""
    source = np.asarray(prediction.data)
    target = np.asarray(annotation.data)
    accepted = np.where(_plane_mask(source.shape, planes), source, target)
    write_result(annotation, accepted, Overwrite.REPLACE, locked=locked_labels(annotation))


@dataclass
class Review:
    """A prediction under review: its layers and the array as it was predicted.

    ``ranking`` lists the axial slices not painted when predicted, most
    uncertain first; ``next_index`` is the position the next jump goes to.
    """

    image: Image
    annotation: Labels
    prediction: Labels
    predicted: np.ndarray
    ranking: list[int] = field(default_factory=list)
    next_index: int = 0

    @property
    def layers(self) -> tuple[Image, Labels, Labels]:
        """The image, annotation and prediction layers the review works on."""
        return self.image, self.annotation, self.prediction

    def corrected_planes(self) -> list[np.ndarray]:
        """Per axis (z, y, x), the planes edited in the prediction layer since prediction."""
        edited = np.asarray(self.prediction.data) != self.predicted
        return painted_planes(edited)

    def accept_corrections(self) -> dict[str, int]:
        """Copy every corrected plane into the annotation layer; count them per axis.

        Accepted planes become the new baseline, so accepting twice copies nothing new.
        """
        _check_same_grid(self.prediction, self.annotation)
        planes = self.corrected_planes()
        _copy_planes(self.prediction, self.annotation, planes)
        mask = _plane_mask(self.predicted.shape, planes)
        self.predicted[mask] = np.asarray(self.prediction.data)[mask]
        return {AXIS_NAMES[axis]: int(p.sum()) for axis, p in enumerate(planes)}

    def accept_slice(self, z: int) -> None:
        """Copy axial slice ``z`` of the prediction, edited or not, into the annotation."""
        _check_same_grid(self.prediction, self.annotation)
        planes = [np.zeros(n, dtype=bool) for n in self.predicted.shape]
        planes[0][z] = True
        _copy_planes(self.prediction, self.annotation, planes)
        self.predicted[z] = np.asarray(self.prediction.data)[z]


def displayed_slice(viewer: ViewerModel, layer: Labels | Image) -> int:
    """The axial (first data axis) slice of ``layer`` at the viewer's current point."""
    world = np.asarray(viewer.dims.point)[-layer.ndim :]
    index = np.asarray(layer.world_to_data(world))
    return int(np.clip(np.round(index[-3]), 0, layer.data.shape[-3] - 1))


def go_to_slice(viewer: ViewerModel, layer: Labels | Image, z: int) -> float:
    """Move the viewer to axial slice ``z`` of ``layer``; return the world position set.

    The slice's centre voxel goes through the layer's own data-to-world map, so
    any spacing, origin or direction is honoured; only the viewer axis that
    shows the layer's first data axis is moved.
    """
    shape = np.asarray(layer.data.shape[-3:], dtype=float)
    centre = np.zeros(layer.ndim)
    centre[-3:] = (shape - 1) / 2
    centre[-3] = z
    world = np.asarray(layer.data_to_world(centre))
    position = float(world[-3])
    viewer.dims.set_point(viewer.dims.ndim - 3, position)
    return position
