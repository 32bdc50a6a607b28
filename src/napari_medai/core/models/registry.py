"""Models known by name: built-ins and installed extras, plus the user's model folder.

The user's folder is ``$NAPARI_MEDAI_MODELS`` or, by default, ``models`` in the
platform's user data folder (``~/.local/share/napari-medai/models`` on Linux).
Each model package or MONAI bundle folder in it is listed under its folder name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from napari_medai.core.errors import MedaiError
from napari_medai.core.models import deepbet
from napari_medai.core.models.card import CARD_FILE, ModelCard
from napari_medai.core.models.formats import METADATA_FILE, is_bundle_folder, is_model_package

MODELS_ENV = "NAPARI_MEDAI_MODELS"


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can pick by name.

    ``kind`` is "builtin", "package" or "bundle"; ``available`` is False when
    the model cannot be loaded here (extra not installed, unreadable card);
    ``location`` is the folder of a package or bundle.
    """

    name: str
    description: str
    kind: str
    available: bool
    location: Path | None = None


def user_model_dir() -> Path:
    """The folder where saved model packages are looked up by name."""
    configured = os.environ.get(MODELS_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("napari-medai", appauthor=False)) / "models"


def _builtin_entries() -> list[ModelEntry]:
    available = deepbet.deepbet_available()
    description = deepbet.DEEPBET_DESCRIPTION
    if not available:
        description += "; install with: pip install 'napari-medai[brain]'"
    return [ModelEntry(deepbet.DEEPBET_NAME, description, "builtin", available)]


def _folder_entry(folder: Path) -> ModelEntry | None:
    if is_model_package(folder):
        try:
            card = ModelCard.read(folder / CARD_FILE)
        except MedaiError as error:
            return ModelEntry(folder.name, f"unreadable card: {error}", "package", False, folder)
        labels = ", ".join(name for value, name in sorted(card.label_names.items()) if value)
        description = f"{card.task}: {labels} ({card.architecture})"
        return ModelEntry(folder.name, description, "package", True, folder)
    if is_bundle_folder(folder):
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            metadata = {}
        title = metadata.get("name") or folder.name
        version = metadata.get("version")
        description = f"MONAI bundle {title}" + (f" {version}" if version else "")
        return ModelEntry(folder.name, description + " (needs trust)", "bundle", True, folder)
    return None


def _user_entries() -> list[ModelEntry]:
    root = user_model_dir()
    if not root.is_dir():
        return []
    # Hidden folders are unfinished atomic writes (see core.files.atomic_directory).
    folders = (p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
    entries = (_folder_entry(p) for p in folders)
    return [e for e in entries if e is not None]


def list_models(include_unavailable: bool = False) -> list[ModelEntry]:
    """Built-ins first, then the user's folder; unavailable ones only when asked."""
    entries = _builtin_entries() + _user_entries()
    return [e for e in entries if e.available or include_unavailable]


def find_model(name: str) -> ModelEntry | None:
    """The entry called ``name`` (available or not), or None."""
    return next((e for e in list_models(include_unavailable=True) if e.name == name), None)
