"""Label statistics and evaluation inputs from napari layers."""

from __future__ import annotations

from napari.layers import Image, Labels

from napari_medai._napari.export import labels_snapshot
from napari_medai._napari.layers import volume_from_layer
from napari_medai.core.errors import MedaiError
from napari_medai.core.volume import LabelMap, Volume


def statistics_input(labels: Labels, image: Image | None) -> tuple[LabelMap, Volume | None]:
    """The label map (a copy) and the scan under it (3D greyscale only), for the Statistics dock."""
    volume = None
    if image is not None:
        if image.rgb or image.multiscale or image.ndim != 3:
            raise MedaiError(
                f"layer '{image.name}' is not a 3D greyscale scan; pick another image or none"
            )
        volume = volume_from_layer(image)
    return labels_snapshot(labels), volume


def evaluation_input(prediction: Labels, reference: Labels) -> tuple[LabelMap, LabelMap]:
    """Both label maps (copies) with geometry and names; the core resamples if grids differ."""
    if prediction is reference:
        raise MedaiError("pick two different label layers: a prediction and a reference")
    for layer in (prediction, reference):
        if layer.ndim != 3 or layer.multiscale:
            raise MedaiError(
                f"layer '{layer.name}' is not a single-scale 3D label map: "
                "Evaluate compares 3D Labels layers"
            )
    return labels_snapshot(prediction), labels_snapshot(reference)
