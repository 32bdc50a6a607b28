"""Model packages that hold only their card: what a model picker or the model list reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_medai.core.models.card import CARD_FILE, ModelCard


def card_only_package(folder: Path, **fields: Any) -> Path:
    """A package folder with a UNet liver card (``fields`` change it) and no weights."""
    card = ModelCard(
        **{
            "name": folder.name,
            "architecture": "UNet",
            "architecture_args": {},
            "label_names": {0: "background", 1: "liver"},
            "patch_size": [1, 64, 64],
            **fields,
        }
    )
    folder.mkdir(parents=True)
    (folder / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    return folder
