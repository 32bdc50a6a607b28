"""npe2 readers: CT/MRI files and DICOM series as layers with physical geometry.

:func:`get_reader` opens scans as Image layers and segmentations (integer files
with few values, see :func:`looks_like_labels`) as Labels layers;
:func:`open_segmentation` (File > IO Utilities) opens files as Labels whatever
their values.
Label names stored in the file become the layer's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import napari
from napari.layers import Layer
from napari.types import LayerDataTuple
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medai._napari.layers import METADATA_KEY, image_layer_data, labels_layer_data
from napari_medai.core.errors import MedaiError
from napari_medai.core.io.labels import (
    as_label_map,
    looks_like_labels,
    read_segmentation,
    stored_segments,
)
from napari_medai.core.io.reading import can_read, dicom_series_key, distinct_sources
from napari_medai.core.jobs import run_job

Reader = Callable[[str | list[str]], list[LayerDataTuple]]


def _paths(path: str | list[str]) -> list[Path]:
    return [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]


def get_reader(path: str | list[str]) -> Reader | None:
    """Return :func:`read_layers` when every path looks like a scan we read."""
    paths = _paths(path)
    if paths and all(can_read(p) for p in paths):
        return read_layers
    return None


def read_layers(path: str | list[str]) -> list[LayerDataTuple]:
    """Read each path as an image layer, or a labels layer when it is a segmentation.

    A DICOM-SEG or RTSTRUCT (alone beside its series, or in the series' folder or
    zip) adds a Labels layer on the scan's grid. Bad input raises a clear MedaiError.
    """
    # Imported here: pydicom is not needed to decide whether we read a path.
    from napari_medai.core.io.dicom_derived import read_scan_and_labels_job

    sources = distinct_sources(_paths(path))
    if len(sources) == 1 and (shown := _layer_showing_series(sources[0])):
        # napari's "Open Files" hands a multi-file selection over one file at a time.
        show_info(f'"{sources[0].name}" is part of the DICOM series already open as "{shown}"')
        return [(None,)]
    try:
        read = [(source, *run_job(read_scan_and_labels_job(source))) for source in sources]
    except MedaiError as error:
        # napari's own notification for a failed reader is generic ("... gave an error");
        # this one says what is wrong with which file. The error still propagates.
        show_error(str(error))
        raise
    layers = []
    for source, volume, derived in read:
        for warning in volume.metadata.get("warnings", []):
            show_warning(f"{volume.metadata.get('name', 'scan')}: {warning}")
        if looks_like_labels(volume):
            label_map = as_label_map(volume, *stored_segments(source))
            layers.append(labels_layer_data(label_map))
        else:
            data, kwargs, kind = image_layer_data(volume)
            # In memory only (never in sidecars): lets DICOM export reference the series.
            kwargs["metadata"][METADATA_KEY]["source_path"] = str(source.resolve())
            layers.append((data, kwargs, kind))
        for labels in derived:
            for warning in labels.metadata.get("warnings", []):
                show_warning(f"{labels.metadata.get('name', 'segmentation')}: {warning}")
            layers.append(labels_layer_data(labels))
    return layers


def _layer_showing_series(source: Path) -> str | None:
    """The name of a layer of the current viewer showing the DICOM series of ``source``."""
    viewer = napari.current_viewer()
    series = dicom_series_key(source) if viewer is not None else None
    if series is None:
        return None
    for layer in viewer.layers:
        provenance = layer.metadata.get(METADATA_KEY, {}).get("provenance", {})
        if provenance.get("series_uid") == series:
            return layer.name
    return None


#: File types "Open segmentation" offers (a DICOM-SEG opens with File > Open beside its scan).
SEGMENTATION_FILTER = "Label maps (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.mgz *.mgh)"


def read_segmentations(path: str | list[str]) -> list[LayerDataTuple]:
    """Read each path as a labels layer, whatever its values (as 3D Slicer's "labelmap")."""
    return [labels_layer_data(read_segmentation(source)) for source in _paths(path)]


def choose_segmentation_files() -> list[str]:
    """Ask for label map files with the GUI toolkit's file dialog; [] when cancelled."""
    from magicgui.application import use_app

    show_file_dialog = use_app().get_obj("show_file_dialog")
    chosen = show_file_dialog("rm", caption="Open segmentation", filter=SEGMENTATION_FILTER)
    return list(chosen or [])


def open_segmentation(viewer: napari.viewer.Viewer) -> list[Layer]:
    """File > IO Utilities > Open segmentation: chosen files as Labels, whatever their values.

    A menu command rather than a second npe2 reader: napari's "Choose reader"
    dialog lists one entry per plugin, and npe2 tries a plugin's readers in no
    fixed order, so a second reader would be unreachable or picked at random.
    """
    return [
        viewer.add_labels(data, **kwargs)
        for data, kwargs, _ in read_segmentations(choose_segmentation_files())
    ]
