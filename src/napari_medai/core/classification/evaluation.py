"""Score a classifier on a held-out set the user picked, as a generator job.

The examples are built by the training path's own builders
(:mod:`~napari_medai.core.classification.examples`) with the model's patch
size, intensity normalisation and context slices, so a slice or box reaches
the network exactly as in training and inference. The figures come from
:func:`~napari_medai.core.classification.metrics.classification_metrics`,
described by :meth:`~napari_medai.core.classification.heldout.HeldOutSet.describe`
and tagged with the model's name. Evaluating on the split a training run held
out gives that run's held-out figures again. A model trained on boxes is
scored on picked slices by its per-slice verdicts over box-sized windows, as
"every slice" classifies (:mod:`~napari_medai.core.classification.slice_tiles`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifyConfig,
    ClassifyResult,
)
from napari_medai.core.classification.examples import (
    Examples,
    examples_from_label_slices,
    examples_from_regions,
    slice_classes,
)
from napari_medai.core.classification.heldout import HeldOutSet
from napari_medai.core.classification.inference import Batches, classify_job
from napari_medai.core.classification.metrics import classification_metrics
from napari_medai.core.classification.model import check_classifier, class_names
from napari_medai.core.classification.slice_tiles import learnt_box
from napari_medai.core.devices import (
    CPU,
    choose_device,
    is_out_of_memory,
    release_memory,
)
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.volume import Volume

#: Share of the progress bar given to reading the examples.
_READING_SHARE = 0.2


def _truth(volume: Volume, picked: HeldOutSet, names: dict[int, str]) -> tuple[np.ndarray, list]:
    """Each picked example's true class and the slices used; cheap, before anything is read."""
    if picked.kind == "slices":
        labels = picked.labels
        if labels.array.shape != volume.spatial_shape:
            raise ClassificationError(
                f"the labels ({labels.array.shape}) are not on the image's grid "
                f"({volume.spatial_shape})"
            )
        if len(picked.values) + 1 != len(names):
            listed = ", ".join(names[k] for k in sorted(names))
            raise ClassificationError(
                f"the classifier has {len(names)} classes ({listed}), so it needs "
                f"{len(names) - 1} label value(s), one per class after {names[0]!r}; "
                f"{len(picked.values)} given"
            )
        _check_names(picked, names)
        used = picked.slice_indices(volume.spatial_shape[picked.axis])
        return slice_classes(labels.array, picked.values, picked.axis)[used], used
    picked.slice_indices(volume.spatial_shape[0])
    regions, classes = picked.picked_boxes()
    index = {name: k for k, name in names.items()}
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise ClassificationError(
            f"boxes of '{picked.source_name}' have class {unknown[0]!r}, which the classifier "
            f"does not know; its classes are {', '.join(names[k] for k in sorted(names))}"
        )
    used = sorted({region.start[0] for region in regions})
    return np.asarray([index[c] for c in classes], dtype=np.int64), used


def _check_names(picked: HeldOutSet, names: dict[int, str]) -> None:
    """Refuse a label value whose name is not the classifier's name for its class.

    Class k is read from the k-th label value; where both are named, the names
    must agree, or the figures would score 'kidney' slices as 'spleen'.
    """
    for k, value in enumerate(picked.values, 1):
        named = picked.labels.label_names.get(value)
        if named is not None and named != names[k]:
            raise ClassificationError(
                f"label {value} of '{picked.source_name}' is {named!r}, but the classifier's "
                f"class {k} is {names[k]!r}; give the label value named {names[k]!r}"
            )


def held_out_examples(volume: Volume, picked: HeldOutSet, card: ModelCard) -> Examples:
    """The picked examples read as ``card``'s model reads them, with its class names."""
    names = class_names(card)
    common = {
        "intensity": dict(card.intensity),
        "patch_size": list(card.patch_size),
        "context_slices": card.context_slices,
    }
    if picked.kind == "slices":
        used = picked.slice_indices(volume.spatial_shape[picked.axis])
        examples = examples_from_label_slices(
            volume, picked.labels, picked.values, picked.axis, slices=used, **common
        )
        examples.class_names = names
        return examples
    regions, classes = picked.picked_boxes()
    index = {name: k for k, name in names.items()}
    return examples_from_regions(volume, regions, [index[c] for c in classes], names, **common)


def evaluate_job(
    model: LoadedModel, volume: Volume, picked: HeldOutSet, device: str = "auto"
) -> Job[dict[str, Any]]:
    """Score ``model`` on the ``picked`` examples of ``volume``; returns the metrics dict.

    Checks the set, the model and that every class has an example at once,
    raising :class:`ClassificationError` before anything is read.
    """
    picked.check()
    card = model.card
    check_classifier(model, volume, "slices" if picked.kind == "slices" else "regions")
    if card.spatial_dims != 2:
        raise ClassificationError(
            f"'{card.name}' is a 3D classifier; held-out evaluation scores 2D classifiers on "
            "slices or boxes"
        )
    names = class_names(card)
    truth, used = _truth(volume, picked, names)
    missing = [names[k] for k in sorted(names) if not (truth == k).any()]
    if missing:
        raise ClassificationError(
            f"the picked {picked.kind} hold no example of class "
            f"{', '.join(repr(n) for n in missing)}; metrics need at least one of each class: "
            "widen the slice range or pick another layer"
        )
    if picked.kind == "slices" and learnt_box(card):
        config = ClassifyConfig(scope="slices", axis=picked.axis, device=device)
        return _evaluate_windows(classify_job(volume, model, config), picked, truth, used)
    return _evaluate(model, volume, picked, used, choose_device(device))


def _evaluate_windows(
    job: Job[ClassifyResult], picked: HeldOutSet, truth: np.ndarray, used: list
) -> Job[dict[str, Any]]:
    """A box-trained model's slice verdicts (read as windows, see windows.py), scored.

    Its figures on slices squeezed to one box would not be its own.
    """
    result = yield from job
    rows = np.array([result.predictions[i].probabilities for i in used])
    metrics = classification_metrics(truth, rows, result.class_names, picked.describe(used))
    metrics["computed_on"]["model"] = result.provenance["model"]
    metrics["computed_on"]["description"] += (
        ", each slice read as box-sized windows (the model learnt from boxes)"
    )
    return metrics


class _ExampleInputs:
    """Examples as :class:`Batches` reads inputs: already normalised and patch-sized."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.count = len(images)
        self.voxels = int(images[0].numel()) if self.count else 1

    def read(self, indices: list[int], device: torch.device) -> torch.Tensor:
        return self.images[indices].to(device)


def _evaluate(
    model: LoadedModel, volume: Volume, picked: HeldOutSet, used: list, device: torch.device
) -> Job[dict[str, Any]]:
    network, card = model.network, model.card
    parameter = next(iter(network.parameters()), None)
    home = parameter.device if parameter is not None else CPU
    try:
        yield Progress(0.0, f"reading the held-out {picked.kind}")
        examples = held_out_examples(volume, picked, card)
        network.eval().to(device)
        inputs = _ExampleInputs(examples.images)
        runner = Batches(model, ClassifyConfig(), device, inputs.voxels)
        rows: list[np.ndarray] = []
        done = 0
        while done < inputs.count:
            fraction = _READING_SHARE + (1 - _READING_SHARE) * done / inputs.count
            indices = runner.next_indices(done, inputs.count)
            try:
                _batch, probabilities = runner.run(inputs, indices)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                yield Progress(fraction, runner.fall_back())
                continue
            rows.append(probabilities.numpy())
            done += len(indices)
            fraction = _READING_SHARE + (1 - _READING_SHARE) * done / inputs.count
            yield Progress(fraction, f"scored {done}/{inputs.count} held-out {picked.kind}")
        metrics = classification_metrics(
            examples.labels, np.concatenate(rows), examples.class_names, picked.describe(used)
        )
        metrics["computed_on"]["model"] = card.name
        return metrics
    finally:
        network.to(home)
        release_memory(device)
