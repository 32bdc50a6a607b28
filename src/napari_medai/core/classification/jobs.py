"""The Classify dock's jobs, each run in the worker process through ``core.catalogue``.

Each job loads what it needs where it runs (the model, torch, MONAI), so
napari's process never does: classify a scan (with its Grad-CAM), score a
classifier on picked examples, or build training examples from classed boxes
or labelled slices and train on them. Arguments and results pickle (volumes,
label maps, boxes, configs, metrics dicts), never a network; the dock builds
the :class:`ClassifierTrainConfig` itself, without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_medai.core.classification.config import (
    ClassifierTrainConfig,
    ClassifyConfig,
    ClassifyResult,
    Region,
    TrainedClassifier,
)
from napari_medai.core.classification.evaluation import evaluate_job
from napari_medai.core.classification.examples import (
    Examples,
    examples_from_label_slices,
    examples_from_regions,
)
from napari_medai.core.classification.heldout import HeldOutSet, training_boxes, training_slices
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.classification.training import train_classifier_job
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.models import sources
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.volume import LabelMap, Volume

#: Share of the progress bar given to loading the model.
_LOADING_SHARE = 0.05


def _loaded(source: str, trusted: bool) -> Job[LoadedModel]:
    """The first step of a job: load the model (torch and MONAI come in with it)."""
    yield Progress(0.0, f"loading model {Path(source).name or source}")
    model = sources.load_model(source, trusted=trusted)
    yield Progress(_LOADING_SHARE, f"loaded {model.name}")
    return model


def classify_from_source_job(
    source: str,
    trusted: bool,
    volume: Volume,
    config: ClassifyConfig,
    regions: list[Region] | None = None,
) -> Job[ClassifyResult]:
    """Load the model at ``source``, then classify; its name is ``provenance["model"]``."""
    model = yield from _loaded(source, trusted)
    return (yield from scaled(classify_job(volume, model, config, regions), _LOADING_SHARE, 1.0))


def evaluate_from_source_job(
    source: str, trusted: bool, volume: Volume, picked: HeldOutSet, device: str
) -> Job[dict[str, Any]]:
    """Load the model, then score it on the ``picked`` examples; returns the metrics dict."""
    model = yield from _loaded(source, trusted)
    return (yield from scaled(evaluate_job(model, volume, picked, device), _LOADING_SHARE, 1.0))


def _trained(examples: Examples, config: ClassifierTrainConfig) -> Job[TrainedClassifier]:
    """Train on ``examples``; only what napari needs crosses back.

    The trainer's own result would import torch in napari's process when unpickled.
    """
    result = yield from train_classifier_job(examples, config)
    return TrainedClassifier(result.best_path, result.metrics, result.kept)


def train_on_boxes_job(
    volume: Volume,
    regions: list[Region],
    labels: list[int],
    class_names: dict[int, str],
    config: ClassifierTrainConfig,
    held_out: list[int] | None = None,
) -> Job[TrainedClassifier]:
    """Train on classed boxes.

    Boxes on the ``held_out`` slices (z) are left out, for Evaluate to score on.
    """
    keep = training_boxes(regions, held_out)
    yield Progress(0.0, "reading the boxes")
    examples = examples_from_regions(
        volume, [regions[n] for n in keep], [labels[n] for n in keep], class_names
    )
    return (yield from _trained(examples, config))


def train_on_label_slices_job(
    volume: Volume,
    label_map: LabelMap,
    values: list[int],
    axis: int,
    config: ClassifierTrainConfig,
    held_out: list[int] | None = None,
) -> Job[TrainedClassifier]:
    """Train on every slice along ``axis`` but the ``held_out`` ones, class k when it holds k."""
    kept = training_slices(volume.spatial_shape[axis], held_out)
    yield Progress(0.0, "reading the slices")
    examples = examples_from_label_slices(volume, label_map, values, axis, slices=kept)
    return (yield from _trained(examples, config))
