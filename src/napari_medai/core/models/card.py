"""The model card: everything needed to run a model again, nothing executable.

A model package is a folder holding ``card.json`` and ``model.safetensors``.
The card names a built-in MONAI architecture and its arguments; loading never
imports code named in a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.generative.config import GENERATION_TASK

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT_VERSION = 1

#: Intensity normalisations a card may name (see ``core.segmentation.preprocessing``):
#: ``{"kind": "window", "low": -160, "high": 240}`` clips and scales a CT window,
#: ``{"kind": "percentile", "low": 0.5, "high": 99.5}`` scales MR by percentiles,
#: ``{"kind": "zscore"}`` standardises over non-zero voxels, ``{"kind": "none"}``.
INTENSITY_KINDS = ("window", "percentile", "zscore", "none")


def normalise_modality(modality: str | None) -> str:
    """DICOM modality in capitals ("MR" for "mri"/"MRI"), or "" when unknown."""
    text = (modality or "").strip().upper()
    return "MR" if text == "MRI" else text


@dataclass
class ModelCard:
    """Description of a model package (all spatial lists in (z, y, x) order).

    ``spatial_dims`` is 2 for slice-wise models (run along z; ``in_channels``
    greater than 1 with ``context_slices`` makes a 2.5D model) and 3 for volume
    models. ``spacing`` of ``None`` runs at the scan's own spacing;
    ``orientation`` of ``None`` runs in the scan's own orientation, otherwise an
    ITK orientation code such as ``"LPS"`` or ``"RAS"``. ``modality`` is the
    DICOM modality the model was made for ("CT", "MR", ...; ``None``: any) and
    ``body_region`` where it looks ("abdomen", "head"; ``None``: anywhere); the
    Segment widget uses both to pick a model that fits the open scan and to
    warn before a model runs on the wrong kind of scan. Cards written before
    these fields existed load with both ``None``.
    """

    name: str
    architecture: str
    architecture_args: dict[str, Any]
    label_names: dict[int, str]
    patch_size: list[int]
    task: str = "segmentation"
    spatial_dims: int = 3
    in_channels: int = 1
    context_slices: int = 0
    spacing: list[float] | None = None
    orientation: str | None = None
    intensity: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    training: dict[str, Any] = field(default_factory=dict)
    modality: str | None = None
    body_region: str | None = None
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.label_names = {int(k): str(v) for k, v in self.label_names.items()}
        kind = self.intensity.get("kind")
        if kind not in INTENSITY_KINDS:
            raise ModelLoadError(f"model card: unknown intensity normalisation {kind!r}")
        if self.spatial_dims not in (2, 3):
            raise ModelLoadError(
                f"model card: spatial_dims must be 2 or 3, not {self.spatial_dims}"
            )
        if self.modality is not None:
            self.modality = normalise_modality(self.modality) or None
        if len(self.patch_size) != 3:
            raise ModelLoadError("model card: patch_size needs three numbers (z, y, x)")

    @property
    def num_classes(self) -> int:
        """Output channels: one per label value, background included."""
        return max(self.label_names, default=0) + 1

    def to_json(self) -> str:
        """The card as pretty JSON (label keys become strings)."""
        data = asdict(self)
        data["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse a card, naming ``source`` in any error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"{source}: not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source}: a model card is a JSON object")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if version > CARD_FORMAT_VERSION:
            raise ModelLoadError(
                f"{source}: card format {version} is newer than this napari-medai understands"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"{source}: unknown card fields {unknown}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ModelLoadError(f"{source}: {error}") from error

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read a card from a JSON file."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"), source=str(path))


def refuse_generator(card: ModelCard, action: str) -> None:
    """Refuse a generator package where a model that predicts labels is needed."""
    if card.task == GENERATION_TASK:
        raise ModelLoadError(
            f"'{card.name}' is an image generator (card task '{GENERATION_TASK}'): it makes "
            f"synthetic images and cannot {action}; pick a segmentation model"
        )
