"""Does a model fit a scan? Compare the card's modality with the scan's, before running.

A model made for MR brains (deepbet) run on a CT returns nonsense without any
error; saying so before the run, and never offering such a model first, is
the guard. An unknown modality on either side fits anything: nothing is
known to be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from napari_medai.core.models.card import normalise_modality

#: How a modality code reads in a sentence.
MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "PT": "PET", "US": "ultrasound", "CR": "X-ray"}


class _HasModality(Protocol):
    modality: str | None
    body_region: str | None


def describe_modality(modality: str | None) -> str:
    """ "CT", "MRI", ... for a code; "any scan" for None."""
    code = normalise_modality(modality)
    return MODALITY_NAMES.get(code, code) if code else "any scan"


def modality_mismatch(model: _HasModality, name: str, image_modality: str | None) -> str | None:
    """A warning when ``model`` is made for another modality than the image's, else None."""
    wanted, have = normalise_modality(model.modality), normalise_modality(image_modality)
    if not wanted or not have or wanted == have:
        return None
    region = f" {model.body_region}" if model.body_region else ""
    return (
        f"'{name}' is made for {describe_modality(wanted)}{region} scans, but this image is "
        f"{describe_modality(have)}: the result will likely be wrong"
    )


def best_fit(models: Sequence[_HasModality], image_modality: str | None) -> int | None:
    """Index of the model to offer first for an image, or None when none fits.

    A model made for the image's modality comes first, then one made for any
    modality; a model made for another modality (or any specific modality when
    the image's is unknown) is never offered first.
    """
    have = normalise_modality(image_modality)
    modalities = [normalise_modality(m.modality) for m in models]
    if have:
        exact = [i for i, m in enumerate(modalities) if m == have]
        if exact:
            return exact[0]
    generic = [i for i, m in enumerate(modalities) if not m]
    return generic[0] if generic else None
