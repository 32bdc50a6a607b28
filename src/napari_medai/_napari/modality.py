"""The modality of an image layer: what the reader stored, else what its values show."""

from __future__ import annotations

from napari.layers import Layer

from napari_medai._napari.layers import METADATA_KEY
from napari_medai.core.models.fit import scan_modality


def layer_modality(layer: Layer) -> str:
    """ "CT", "MR", ... as the file said; else "CT", "NOT CT" or "" (unknown) from its values.

    See :func:`~napari_medai.core.models.fit.modality_from_intensities`; the
    values are judged on a subsample, so it is cheap on big volumes.
    """
    stated = layer.metadata.get(METADATA_KEY, {}).get("provenance", {}).get("modality")
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    return scan_modality(stated, data)
