"""An image layer's modality: as its file stated, else as its values show."""

from __future__ import annotations

import numpy as np
from napari.layers import Image

from napari_medai._napari.layers import METADATA_KEY
from napari_medai._napari.modality import layer_modality
from napari_medai.core.models.fit import NOT_CT


def image(data: np.ndarray, modality: str | None = None) -> Image:
    provenance = {} if modality is None else {"modality": modality}
    return Image(data, metadata={METADATA_KEY: {"provenance": provenance}})


def test_a_stated_modality_wins_and_values_speak_for_a_file_that_states_none():
    rng = np.random.default_rng(0)
    mr_like = rng.uniform(0, 800, (8, 32, 32)).astype(np.float32)
    assert layer_modality(image(mr_like)) == NOT_CT
    assert layer_modality(image(mr_like, "mri")) == "MR"
    air = mr_like - 1000
    assert layer_modality(image(air)) == "CT"
    assert layer_modality(image(mr_like - 500)) == ""  # neither air nor clearly above fat
