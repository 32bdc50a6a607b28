"""The modality of an image layer: what the reader stored, else a guess from its values."""

from __future__ import annotations

from napari.layers import Layer

from napari_medai._napari.layers import METADATA_KEY
from napari_medai.core.models.card import normalise_modality
from napari_medai.core.windows import value_range

#: CT stores air at about -1000 HU; an image reaching this low is taken for CT
#: (the reader's own test for files that do not name their modality).
CT_AIR_HU = -900.0


def layer_modality(layer: Layer) -> str:
    """ "CT", "MR", ... as the file said; "CT" for an image reaching air; else "" (unknown).

    The guess looks at a subsample (see :func:`value_range`), so it is cheap on
    big volumes.
    """
    info = layer.metadata.get(METADATA_KEY, {})
    stated = normalise_modality(info.get("provenance", {}).get("modality"))
    if stated:
        return stated
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
    if getattr(data, "dtype", None) is None or data.dtype.kind not in "if":
        return ""
    return "CT" if value_range(data)[0] <= CT_AIR_HU else ""
