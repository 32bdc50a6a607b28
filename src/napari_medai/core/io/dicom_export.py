"""What a DICOM output (DICOM-SEG or RTSTRUCT) records beyond the mask: the user's choices.

Apart from :mod:`.export` so that the SEG and RTSTRUCT writers and the export
entry point all import it, and none of them imports another to get it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from napari_medai.core.errors import ExportError

#: Algorithm type choices; "auto" derives it from the provenance.
ALGORITHM_TYPES = ("auto", "manual", "semiautomatic", "automatic")


@dataclass(frozen=True)
class DicomExportConfig:
    """Choices for DICOM-SEG and RTSTRUCT outputs (the widget and CLI build one).

    ``algorithm``: one of :data:`ALGORITHM_TYPES`. ``deidentify``: PS3.15 basic
    profile (UIDs kept). ``new_uids``: write against a source series whose UIDs
    were blanked, referencing new UIDs (with a warning) instead of refusing.
    ``compact``: a LABELMAP segmentation compressed with JPEG-LS (one frame per
    slice instead of one per slice and label: far smaller with many labels, but
    read only by recent viewers); otherwise BINARY, which every SEG reader opens.
    """

    algorithm: str = "auto"
    deidentify: bool = False
    new_uids: bool = False
    compact: bool = False


def algorithm_of(provenance: Mapping[str, Any], choice: str = "auto") -> tuple[str, str | None]:
    """The segment algorithm type and model name for a mask's provenance.

    A mask with a model in its provenance is AUTOMATIC (SEMIAUTOMATIC when the
    provenance says it was edited); one without is MANUAL.
    """
    if choice not in ALGORITHM_TYPES:
        raise ExportError(f"algorithm type must be one of {', '.join(ALGORITHM_TYPES)}")
    model = provenance.get("model")
    model_name = str(model) if model else None
    if choice == "auto":
        if model_name is None:
            return "MANUAL", None
        choice = "semiautomatic" if provenance.get("edited") else "automatic"
    if choice != "manual" and model_name is None:
        model_name = "napari-medai"
    return choice.upper(), model_name if choice != "manual" else None
