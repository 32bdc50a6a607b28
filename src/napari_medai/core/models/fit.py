"""Does a model fit a scan? Compare the card's modality with the scan's, before running.

A model made for MR brains (deepbet) run on a CT returns nonsense without any
error; saying so before the run, and never offering such a model first, is
the guard. An unknown modality on either side fits anything: nothing is
known to be wrong.

A scan whose file names no modality (a NIfTI) is judged by its values
(:func:`modality_from_intensities`): reaching air makes it CT; nothing below
fat's Hounsfield units makes it :data:`NOT_CT` (MR, PET, ... or a CT stored
without its rescale: a CT model is wrong for it either way); anything between
stays unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from napari_medai.core.models.card import normalise_modality
from napari_medai.core.volume import Volume
from napari_medai.core.windows import value_range

#: How a modality code reads in a sentence.
MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "PT": "PET", "US": "ultrasound", "CR": "X-ray"}
#: CT stores air at about -1000 HU; a scan reaching this low is taken for CT.
CT_AIR_HU = -900.0
#: Every CT of a body holds fat (about -100 HU) or air below this; MR, PET and the like
#: do not go below 0 (apart from a little interpolation ringing) unless normalised.
CT_FAT_HU = -100.0
#: The modality of a scan with no value below :data:`CT_FAT_HU`: not a CT in Hounsfield
#: units, otherwise unknown (a code no DICOM modality can take: it holds a space).
NOT_CT = "NOT CT"


class _HasModality(Protocol):
    modality: str | None
    body_region: str | None


def modality_from_intensities(array: Any) -> str:
    """ "CT" for a scan reaching air, :data:`NOT_CT` for one with nothing below fat's HU,
    else "" (unknown); judged on a subsample (see :func:`value_range`), so cheap on big
    volumes (air and fat fill whole regions of a CT, so a subsample finds them)."""
    if getattr(array, "dtype", None) is None or array.dtype.kind not in "iuf":
        return ""
    lowest = value_range(array)[0]
    if lowest <= CT_AIR_HU:
        return "CT"
    return NOT_CT if lowest >= CT_FAT_HU else ""


def scan_modality(stated: str | None, array: Any) -> str:
    """The modality the file states, else the one its values show (see module notes)."""
    return normalise_modality(stated) or modality_from_intensities(array)


def volume_modality(volume: Volume) -> str:
    """:func:`scan_modality` of a volume read from a file (what a model check compares)."""
    return scan_modality(volume.modality, volume.array)


def describe_modality(modality: str | None) -> str:
    """ "CT", "MRI", ... for a code; "any scan" for None."""
    code = normalise_modality(modality)
    if code == NOT_CT:
        return "a scan other than CT"
    return MODALITY_NAMES.get(code, code) if code else "any scan"


def _what_the_image_is(modality: str) -> str:
    if modality == NOT_CT:
        return (
            "this image is not a CT in Hounsfield units (no value below "
            f"{CT_FAT_HU:.0f} HU, where a CT shows fat and air)"
        )
    return f"this image is {describe_modality(modality)}"


def modality_mismatch(model: _HasModality, name: str, image_modality: str | None) -> str | None:
    """A warning when ``model`` is made for another modality than the image's, else None.

    An image known only to be :data:`NOT_CT` mismatches a CT model and nothing else.
    """
    wanted, have = normalise_modality(model.modality), normalise_modality(image_modality)
    if not wanted or not have or wanted == have or (have == NOT_CT and wanted != "CT"):
        return None
    region = f" {model.body_region}" if model.body_region else ""
    return (
        f"'{name}' is made for {describe_modality(wanted)}{region} scans, but "
        f"{_what_the_image_is(have)}: the result will likely be wrong"
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
