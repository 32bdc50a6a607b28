"""Dice + cross-entropy that only counts annotated voxels.

MONAI's ``DiceCELoss`` has no ignore mask, so the two halves are combined here
by hand: the cross-entropy is torch's per-voxel loss averaged over annotated
voxels only, and the Dice is MONAI's ``DiceLoss`` fed probabilities and one-hot
targets that are both zeroed outside the mask, so unannotated voxels add
nothing to either the overlap or the sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


class MaskedDiceCELoss(torch.nn.Module):
    """Mean of masked cross-entropy and masked soft Dice over the trained classes.

    ``classes`` are the foreground label values present in the training data;
    the Dice averages over them only (channels for label values nobody painted
    would otherwise pull the loss around), the cross-entropy covers every channel.
    """

    def __init__(self, classes: list[int]) -> None:
        super().__init__()
        self.classes = list(classes)
        self.dice = DiceLoss(include_background=True, batch=True, reduction="none")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``logits`` (B, K, *S), ``target`` (B, *S) label values, ``mask`` (B, *S) bool."""
        weight = mask.to(logits.dtype)
        annotated = weight.sum().clamp_min(1.0)
        cross_entropy = (F.cross_entropy(logits, target, reduction="none") * weight).sum()
        cross_entropy = cross_entropy / annotated
        channel_mask = weight.unsqueeze(1)
        probabilities = torch.softmax(logits, dim=1)[:, self.classes] * channel_mask
        one_hot = torch.stack([(target == c) for c in self.classes], dim=1).to(logits.dtype)
        dice = self.dice(probabilities, one_hot * channel_mask).mean()
        return cross_entropy + dice
