"""deepbet's two networks as one torch module (see :mod:`napari_medai.core.models.deepbet`)."""

from __future__ import annotations

import numpy as np
import torch

from napari_medai.core.errors import MedaiError

_THRESHOLD = 0.5


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
