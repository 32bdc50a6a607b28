"""Check that a loaded model is a classifier that fits the scan and the scope."""

from __future__ import annotations

from napari_medai.core.classification.config import TASK, ClassificationError
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.volume import Volume


def class_names(card: ModelCard) -> dict[int, str]:
    """Output channel -> class name (unnamed channels are numbered)."""
    return {k: card.label_names.get(k, f"class {k}") for k in range(card.num_classes)}


def check_classifier(model: LoadedModel, volume: Volume, scope: str) -> None:
    """Refuse a model of the wrong task, channel count or dimensionality, saying which."""
    card = model.card
    if card.task != TASK:
        raise ClassificationError(
            f"the model '{card.name}' is a {card.task} model, not a classifier; "
            "use it in the Segment widget, or pick a model whose card says task: classification"
        )
    if card.num_classes < 2:
        raise ClassificationError(f"the classifier '{card.name}' names fewer than two classes")
    channels = volume.array.shape[0] if volume.array.ndim == 4 else 1
    wanted = card.in_channels
    if card.spatial_dims == 2 and card.context_slices > 0:
        if channels != 1 or wanted != 2 * card.context_slices + 1:
            raise ClassificationError(
                f"the 2.5D classifier '{card.name}' takes {wanted} neighbouring slices of a "
                "single-channel image"
            )
    elif channels != wanted:
        raise ClassificationError(
            f"the classifier '{card.name}' takes {wanted} input channel(s) but the image has "
            f"{channels}"
        )
    if scope == "volume" and card.spatial_dims != 3:
        raise ClassificationError(
            f"'{card.name}' is a 2D classifier: it classifies slices or boxes, not a whole "
            "volume; choose 'every slice' or 'boxes'"
        )
    if scope == "slices" and card.spatial_dims != 2:
        raise ClassificationError(
            f"'{card.name}' is a 3D classifier: it classifies a whole volume or 3D boxes, "
            "not single slices"
        )
    if scope != "volume" and (card.spacing is not None or card.orientation is not None):
        raise ClassificationError(
            f"'{card.name}' runs at a fixed spacing or orientation, which napari-medai applies "
            "to whole volumes only; classify the whole volume instead"
        )
