"""Models known by name: built-ins and installed extras, plus the user's model folder.

The user's folder is ``$NAPARI_MEDAI_MODELS`` or, by default, ``models`` in the
platform's user data folder (``~/.local/share/napari-medai/models`` on Linux).
Each model package or MONAI bundle folder in it is listed under its folder name.
Models trained but not yet kept wait in its ``drafts`` sub-folder, which is not
listed; :func:`keep_model` moves one into the list, :func:`delete_model`
removes a listed one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from napari_medai.core.errors import MedaiError
from napari_medai.core.models import deepbet
from napari_medai.core.models.card import CARD_FILE, ModelCard, package_file
from napari_medai.core.models.formats import METADATA_FILE, is_bundle_folder, is_model_package

MODELS_ENV = "NAPARI_MEDAI_MODELS"
#: Sub-folder of the user's model folder holding trained models not (yet) kept.
DRAFTS = "drafts"


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can pick by name.

    ``kind`` is "builtin", "package" or "bundle"; ``available`` is False when
    the model cannot be loaded here (extra not installed, unreadable card);
    ``location`` is the folder of a package or bundle. ``title`` is the name
    the card gives (the folder name when it has none), ``modality`` and
    ``body_region`` what the model is for (None: any), ``labels`` its
    foreground label names, ``created`` when its card was written (seconds
    since the epoch) and ``val_dice`` its validation Dice, when known.
    """

    name: str
    description: str
    kind: str
    available: bool
    location: Path | None = None
    title: str = ""
    modality: str | None = None
    body_region: str | None = None
    labels: tuple[str, ...] = ()
    created: float | None = None
    val_dice: float | None = None

    @property
    def summary(self) -> str:
        """One line for a picker: title, labels, date and validation Dice where known."""
        parts = [self.title or self.name]
        if self.labels:
            parts.append(", ".join(self.labels))
        if self.modality:
            parts.append(self.modality + (f" {self.body_region}" if self.body_region else ""))
        if self.created is not None:
            parts.append(time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created)))
        if self.val_dice is not None:
            parts.append(f"Dice {self.val_dice:.2f}")
        return " · ".join(parts)


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
    return [
        ModelEntry(
            deepbet.DEEPBET_NAME,
            description,
            "builtin",
            available,
            title=deepbet.DEEPBET_NAME,
            modality=deepbet.DEEPBET_MODALITY,
            body_region=deepbet.DEEPBET_BODY_REGION,
            labels=("brain",),
        )
    ]


def _folder_entry(folder: Path) -> ModelEntry | None:
    if is_model_package(folder):
        try:
            card = ModelCard.read(package_file(folder, CARD_FILE))
        except MedaiError as error:
            return ModelEntry(folder.name, f"unreadable card: {error}", "package", False, folder)
        labels = tuple(name for value, name in sorted(card.label_names.items()) if value)
        description = f"{card.task}: {', '.join(labels)} ({card.architecture})"
        dice = card.training.get("val_dice")
        return ModelEntry(
            folder.name,
            description,
            "package",
            True,
            folder,
            title=card.name or folder.name,
            modality=card.modality,
            body_region=card.body_region,
            labels=labels,
            created=(folder / CARD_FILE).stat().st_mtime,
            val_dice=None if dice is None else float(dice),
        )
    if is_bundle_folder(folder):
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            metadata = {}
        if not isinstance(metadata, dict):
            metadata = {}
        title = metadata.get("name") or folder.name
        version = metadata.get("version")
        description = f"MONAI bundle {title}" + (f" {version}" if version else "")
        return ModelEntry(folder.name, description + " (needs trust)", "bundle", True, folder)
    return None


def drafts_dir() -> Path:
    """Where trained models wait until they are kept (not listed as ready)."""
    return user_model_dir() / DRAFTS


def _checkpoints(folder: Path) -> Path:
    """The training checkpoints saved beside a model folder (see TrainConfig.checkpoints)."""
    return folder.with_name(folder.name + ".checkpoints")


def keep_model(draft: Path, name: str | None = None) -> Path:
    """Move a model package (and its checkpoints) into the listed models; return its new folder.

    ``name`` is the folder name (default: the draft's); an existing model is
    never replaced, a number is added instead.
    """
    draft = Path(draft)
    base = user_model_dir() / (name or draft.name)
    target, number = base, 1
    while target.exists() or _checkpoints(target).exists():
        number += 1
        target = base.with_name(f"{base.name}-{number}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(draft, target)
    if _checkpoints(draft).exists():
        os.replace(_checkpoints(draft), _checkpoints(target))
    return target


def delete_model(entry: ModelEntry) -> None:
    """Delete a listed model of the user's folder (or a draft) with its checkpoints.

    A model folder that is a link is unlinked; what it points to is left alone.
    """
    folder = entry.location
    root = Path(os.path.abspath(user_model_dir()))
    inside = folder is not None and root in Path(os.path.abspath(folder)).parents
    if entry.kind == "builtin" or folder is None or not inside:
        raise MedaiError(
            f"'{entry.name}' is not in the model folder {root}; only models there can be deleted"
        )
    for path in (folder, _checkpoints(folder)):
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _user_entries() -> list[ModelEntry]:
    root = user_model_dir()
    if not root.is_dir():
        return []
    # Hidden folders are unfinished atomic writes (see core.files.atomic_directory).
    folders = (p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
    entries = (_folder_entry(p) for p in folders if p.name != DRAFTS)
    return [e for e in entries if e is not None]


def list_models(include_unavailable: bool = False) -> list[ModelEntry]:
    """Built-ins first, then the user's folder; unavailable ones only when asked."""
    entries = _builtin_entries() + _user_entries()
    return [e for e in entries if e.available or include_unavailable]


def picker_items(entries: list[ModelEntry], paths: list[str]) -> list[tuple[str, str]]:
    """(text, source) for a model picker: each entry's summary, then each loaded path's name.

    ``source`` is what ``load_model`` takes (a registry name or a folder); texts
    are made unique (a picker tells its entries apart by text).
    """
    items = [(e.summary, e.name if e.location is None else str(e.location)) for e in entries]
    items += [(Path(path).name, path) for path in paths]
    seen: set[str] = set()
    unique = []
    for text, source in items:
        text = text if text not in seen else f"{text} ({Path(source).name})"
        seen.add(text)
        unique.append((text, source))
    return unique


def find_model(name: str) -> ModelEntry | None:
    """The entry called ``name`` (available or not), or None."""
    return next((e for e in list_models(include_unavailable=True) if e.name == name), None)
