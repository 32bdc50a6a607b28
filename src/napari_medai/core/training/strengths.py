"""How strongly training augments: torch-free, so widgets can hold and share it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from napari_medai.core.errors import MedaiError

#: Names of the adjustable augmentations, in display order.
AUGMENTATIONS = ("affine", "elastic", "intensity", "noise")


@dataclass(frozen=True)
class AugmentStrengths:
    """Multipliers of each augmentation's default range; 0 turns it off.

    ``affine`` scales rotation, scale, stretch and shift; ``elastic`` the
    smooth random displacement (off by default, so training is unchanged
    unless asked); ``intensity`` the random intensity scale and shift;
    ``noise`` the Gaussian noise's standard deviation.
    """

    affine: float = 1.0
    elastic: float = 0.0
    intensity: float = 1.0
    noise: float = 1.0

    def __post_init__(self) -> None:
        for name in AUGMENTATIONS:
            if not 0.0 <= getattr(self, name) <= 3.0:
                raise MedaiError(f"the {name} augmentation strength must be within 0..3")

    def to_dict(self) -> dict[str, Any]:
        """For the model card."""
        return asdict(self)


#: Segmentation training's default: half the affine range. The liver from 3 painted
#: slices (bench/train_sparse.py, 5 CPU-s, seeds 0-2) scored a mean Dice of 0.930 (CT) /
#: 0.939 (MR) at full strength and 0.939 / 0.950 at half: the unpainted slices hold the
#: organ at sizes and angles close to the painted ones, so wider warps cost more steps
#: than they teach. The classifier keeps the full range (its own calibration).
SEGMENTATION_AUGMENTATION = AugmentStrengths(affine=0.5)
