"""Is a trained model worth keeping? Validation Dice and painted voxels, read from its card.

A model trained on a handful of voxels, or one whose validation Dice is near
zero, would segment nothing useful; the Train widget reports it plainly and
keeps it out of the model list unless the user keeps it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_medai.core.models.card import ModelCard

#: Below this validation Dice a model is reported as not useful yet. Measured on
#: the phantom and on a real CT liver (README: train_sparse.py), three painted
#: slices reach 0.9 within 10 s; a score under 0.3 means the model has not found
#: the structure at all.
MIN_VAL_DICE = 0.3
#: Fewer foreground voxels than this (a blob of about 7x7x2) is too little to learn from.
MIN_LABEL_VOXELS = 100


@dataclass(frozen=True)
class TrainingQuality:
    """What a model learnt from and how well it validated.

    ``val_dice`` is None when the model was never validated (stopped at once);
    ``label_voxels`` counts voxels painted with a foreground label and
    ``annotated_voxels`` every annotated voxel, over all training pairs.
    """

    val_dice: float | None
    label_voxels: int
    annotated_voxels: int

    @classmethod
    def of(cls, card: ModelCard) -> TrainingQuality:
        """The quality recorded in ``card.training`` by the trainer."""
        info: dict[str, Any] = card.training
        data = info.get("data") or []
        dice = info.get("val_dice")
        return cls(
            val_dice=None if dice is None else float(dice),
            label_voxels=sum(sum(pair.get("label_voxels", {}).values()) for pair in data),
            annotated_voxels=sum(int(pair.get("annotated_voxels", 0)) for pair in data),
        )

    @property
    def problem(self) -> str | None:
        """Why the model is not ready to use, in words a user can act on; None when it is."""
        if self.label_voxels < MIN_LABEL_VOXELS:
            return (
                f"only {self.label_voxels} voxels were painted with a label: "
                "paint the structure on more slices"
            )
        if self.val_dice is None:
            return "the model was never validated: train for longer"
        if self.val_dice < MIN_VAL_DICE:
            return f"validation Dice {self.val_dice:.3f}: paint more slices or train for longer"
        return None

    @property
    def ready(self) -> bool:
        """Whether the model is good enough to list as ready without asking."""
        return self.problem is None
