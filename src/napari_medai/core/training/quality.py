"""Is a trained model worth keeping? Its Dice and painted voxels, read from its card.

A model trained on a handful of voxels, or one whose Dice is near zero, would
segment nothing useful; the Train widget reports it plainly and keeps it out
of the model list unless the user keeps it anyway.

The Dice is a validation only when painted slices were held out from
training; with too few painted slices to hold any back it is measured on the
slices the model was fit on, and every place that shows it says so in the
words of :func:`dice_name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_medai.core.models.card import ModelCard

#: What a Dice is called, by whether it was measured on painted slices held out from
#: training or on the painted slices the model was fit on.
VALIDATION_DICE = "validation Dice"
FIT_DICE = "Dice fit on the painted slices"
#: Why a Dice is a fit, not a validation.
TOO_FEW_TO_HOLD_OUT = "too few painted slices to hold any back"


def dice_name(held_out: bool) -> str:
    """The name of a Dice: a validation on held-out slices, or the fit on the painted ones."""
    return VALIDATION_DICE if held_out else FIT_DICE


def dice_text(dice: float, held_out: bool) -> str:
    """A Dice with its name, short (a progress line): "validation Dice 0.912"."""
    if held_out:
        return f"{VALIDATION_DICE} {dice:.3f}"
    return f"Dice {dice:.3f} fit on the painted slices"


def measured_on(held_out: bool, slices: int) -> str:
    """Where a Dice was measured: ``slices`` painted slices held out, or the fit ones."""
    if not held_out:
        return f"the painted slices the model was fit on ({TOO_FEW_TO_HOLD_OUT})"
    counted = f"{slices} painted slice{'' if slices == 1 else 's'}" if slices else "painted slices"
    return f"{counted} held out from training"


#: Below this Dice a model is reported as not useful yet. Measured on
#: the phantom and on a real CT liver (README: train_sparse.py), three painted
#: slices reach 0.9 within 10 s; a score under 0.3 means the model has not found
#: the structure at all.
MIN_VAL_DICE = 0.3
#: Fewer foreground voxels than this (a blob of about 7x7x2) is too little to learn from.
MIN_LABEL_VOXELS = 100


@dataclass(frozen=True)
class TrainingQuality:
    """What a model learnt from and how well it did.

    ``val_dice`` is None when the model was never validated (stopped at once);
    ``held_out`` says whether it was measured on ``held_out_slices`` painted
    slices kept out of training (else on the painted slices it was fit on;
    a card that does not say counts as a fit). ``label_voxels`` counts voxels
    painted with a foreground label and ``annotated_voxels`` every annotated
    voxel, over all training pairs.
    """

    val_dice: float | None
    label_voxels: int
    annotated_voxels: int
    held_out: bool = False
    held_out_slices: int = 0

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
            held_out=bool(info.get("val_held_out", False)),
            held_out_slices=int(info.get("val_slices") or 0),
        )

    @property
    def dice_name(self) -> str:
        """What the Dice is: "validation Dice" or "Dice fit on the painted slices"."""
        return dice_name(self.held_out)

    @property
    def measured_on(self) -> str:
        """Where the Dice was measured, in words (for the status line, Details and the card)."""
        return measured_on(self.held_out, self.held_out_slices)

    @property
    def summary(self) -> str:
        """The Dice, named, with where it was measured: one clause for the status line."""
        if self.val_dice is None:
            return "not validated"
        if self.held_out:
            return f"{dice_text(self.val_dice, True)} on {self.measured_on}"
        return f"{dice_text(self.val_dice, False)} ({TOO_FEW_TO_HOLD_OUT})"

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
            return (
                f"{dice_text(self.val_dice, self.held_out)}: paint more slices or train for longer"
            )
        return None

    @property
    def ready(self) -> bool:
        """Whether the model is good enough to list as ready without asking."""
        return self.problem is None
