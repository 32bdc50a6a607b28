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
import importlib
from pathlib import Path

import numpy as np
import torch

from napari_medai.core.errors import MedaiError, ModelLoadError
from napari_medai.core.models.axes import ReversedAxes
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.weights import file_sha256

DEEPBET_NAME = "deepbet-brain"
DEEPBET_DESCRIPTION = "brain extraction (skull stripping) for T1 MRI, deepbet (MIT)"
_THRESHOLD = 0.5


@functools.cache
def deepbet_available() -> bool:
    """Whether ``import deepbet`` works (the ``brain`` extra is installed)."""
    try:
        importlib.import_module("deepbet")
    except ImportError:
        return False
    return True


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
    )


class DeepbetNetwork(torch.nn.Module):
    """deepbet's crop-then-segment on an (N, 1, i, j, k) RAS+ tensor.

    Returns (N, 2, i, j, k) log-probabilities: logits whose softmax (as the
    inference pipeline applies it) is deepbet's probability, adjusted so the
    argmax is deepbet's mask after its own post-processing (largest component
    and filled voids inside the box).
    """

    def __init__(self) -> None:
        super().__init__()
        from deepbet import BrainExtraction

        self._bet = BrainExtraction(no_gpu=True)
        # Registered as submodules so ``.to(device)`` moves deepbet's networks.
        self.bbox_model = self._bet.bbox_model
        self.model = self._bet.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities for each volume of the batch (one by one, as deepbet runs)."""
        return torch.stack([self._one(volume[0]) for volume in x]).to(x.device)

    def _one(self, volume: torch.Tensor) -> torch.Tensor:
        array = volume.detach().float().cpu().numpy()
        try:
            foreground = self._bet.run_model(array.copy())
        except (AssertionError, ValueError) as error:
            # deepbet asserts (or finds an empty component list) when its box finder sees no head.
            raise MedaiError(
                "brain extraction found no head in this scan (is it a T1 MRI of the head?)"
            ) from error
        raw = foreground > _THRESHOLD
        mask = self._bet.postprocess(raw.copy())
        # Keep deepbet's probabilities where post-processing agreed with the threshold.
        foreground[raw & ~mask] = 0.0
        foreground[mask & ~raw] = 1.0
        probability = torch.from_numpy(np.ascontiguousarray(foreground, dtype=np.float32))
        return torch.stack([1.0 - probability, probability]).clamp_min_(1e-7).log_()


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
    network = ReversedAxes(DeepbetNetwork()).eval()
    return LoadedModel(
        deepbet_card(),
        network,
        DEEPBET_NAME,
        file_sha256(files),
        predict_volume=network,
        extra={"format": "builtin", "weights": [f.name for f in files]},
    )
