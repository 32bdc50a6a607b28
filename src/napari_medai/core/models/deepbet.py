"""deepbet brain extraction for T1 MRI (optional extra ``brain``), run by our pipeline.

deepbet (MIT, Fisch et al. 2024) ships two TorchScript networks in its wheel: a
small one on a 128^3 thumbnail finds the head's bounding box, the main one
segments that box resampled to 256^3. It reads scans with nibabel's
``as_closest_canonical``, i.e. arrays in RAS+ (i, j, k) order. Our card asks the
inference pipeline to reorient to ITK code "RAS" (the same letters, see
:mod:`napari_medai.core.models.axes`) at the scan's own spacing with raw
intensities; :class:`ReversedAxes` hands deepbet its (i, j, k) array, and the
mask comes back to the source grid through the pipeline like any model's.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.hashing import content_sha256
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel

DEEPBET_NAME = "deepbet-brain"
DEEPBET_DESCRIPTION = "brain extraction (skull stripping) for T1 MRI, deepbet (MIT)"
#: deepbet is trained on T1 MRI of the head; the Segment widget never offers it first for CT.
DEEPBET_MODALITY = "MR"
DEEPBET_BODY_REGION = "head"


@functools.cache
def deepbet_available() -> bool:
    """Whether the ``brain`` extra (deepbet) is installed.

    Looked up, not imported: importing deepbet imports torch (seconds), and the
    model list asks this while a dock opens.
    """
    return importlib.util.find_spec("deepbet") is not None


def deepbet_card() -> ModelCard:
    """How our pipeline feeds deepbet: RAS, own spacing, raw intensities."""
    return ModelCard(
        name=DEEPBET_NAME,
        architecture="deepbet",
        architecture_args={},
        label_names={0: "background", 1: "brain"},
        # deepbet resamples its crop to 256^3 itself; the whole volume is one patch.
        patch_size=[256, 256, 256],
        task="brain extraction",
        spacing=None,
        orientation="RAS",
        intensity={"kind": "none"},
        training={"source": "deepbet (PyPI, MIT)", "reference": "Fisch et al. 2024"},
        modality=DEEPBET_MODALITY,
        body_region=DEEPBET_BODY_REGION,
    )


def _weight_files() -> list[Path]:
    from deepbet.utils import DATA_PATH

    return [Path(DATA_PATH) / "models" / "bbox_model.pt", Path(DATA_PATH) / "models" / "model.pt"]


def load_deepbet() -> LoadedModel:
    """deepbet as a :class:`LoadedModel` (raises if the extra is not installed)."""
    if not deepbet_available():
        raise ModelLoadError(
            f"{DEEPBET_NAME} needs the optional deepbet package: pip install 'napari-medai[brain]'"
        )
    files = _weight_files()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"{DEEPBET_NAME}: deepbet's weights are missing ({', '.join(missing)})"
        )
    from napari_medai.core.models.axes import ReversedAxes
    from napari_medai.core.models.deepbet_network import DeepbetNetwork

    network = ReversedAxes(DeepbetNetwork()).eval()
    return LoadedModel(
        deepbet_card(),
        network,
        DEEPBET_NAME,
        content_sha256(files[0].parent, files),
        predict_volume=network,
        extra={"format": "builtin", "weights": [f.name for f in files]},
    )
