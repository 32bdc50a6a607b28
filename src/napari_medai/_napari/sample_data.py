"""npe2 sample data: a synthetic CT phantom and a real CT fetched once."""

from __future__ import annotations

from napari.types import LayerDataTuple

from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.phantom import make_phantom
from napari_medai.core.samples import TOTALSEG_CT, TOTALSEG_LABEL_NAMES, TOTALSEG_SEG, fetch_sample


def phantom_ct() -> list[LayerDataTuple]:
    """The synthetic abdominal CT and its organ labels."""
    volume, labels = make_phantom()
    return [image_layer_data(volume), labels_layer_data(labels, name="phantom organs")]


def totalsegmentator_ct() -> list[LayerDataTuple]:
    """TotalSegmentator's example CT with its organ map (downloaded once)."""
    volume = read_volume(fetch_sample(TOTALSEG_CT))
    labels = read_label_map(fetch_sample(TOTALSEG_SEG), reference=volume)
    labels.label_names = dict(TOTALSEG_LABEL_NAMES)
    return [image_layer_data(volume), labels_layer_data(labels, name="TotalSegmentator organs")]
