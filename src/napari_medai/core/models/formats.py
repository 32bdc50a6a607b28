"""Recognise model sources on disk without loading them (and without importing torch).

The model list, the widgets and the CLI's argument parsing ask these questions
while starting up; the loaders in :mod:`~napari_medai.core.models.sources`
import torch and MONAI only when a model is really loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from napari_medai.core.models.card import CARD_FILE

#: Where a MONAI bundle keeps its metadata.
METADATA_FILE = "configs/metadata.json"
#: File name endings accepted for single-file models.
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".zip", ".ckpt")


def is_model_package(path: Path) -> bool:
    """Whether ``path`` is a folder holding a model card."""
    return (Path(path) / CARD_FILE).is_file()


def is_bundle_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with ``configs/metadata.json``."""
    return (Path(path) / METADATA_FILE).is_file()


def is_bundle_zip(path: Path) -> bool:
    """Whether ``path`` is a zip holding ``configs/metadata.json`` (at most one folder down)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name == METADATA_FILE or (name.endswith("/" + METADATA_FILE) and name.count("/") == 2)
            for name in archive.namelist()
        )
