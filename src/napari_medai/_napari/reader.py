"""npe2 reader: CT/MRI files and DICOM series as layers with physical geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.types import LayerDataTuple

from napari_medai._napari.layers import image_layer_data
from napari_medai.core.io.reading import can_read, read_volume


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerDataTuple]] | None:
    """Return :func:`read_layers` when every path looks like a scan we read."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if paths and all(can_read(Path(p)) for p in paths):
        return read_layers
    return None


def read_layers(path: str | list[str]) -> list[LayerDataTuple]:
    """Read each path as one image layer; bad input raises a clear MedaiError."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    return [image_layer_data(read_volume(Path(p))) for p in paths]
