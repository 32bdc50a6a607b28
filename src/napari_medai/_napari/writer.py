"""npe2 writer: a Labels layer saved on the grid of the scan it was drawn on.

The grid comes from :func:`~napari_medai._napari.scan_grid.labels_to_save`
(the rule the Export dock and autosave share). A JSON sidecar with label names,
volumes and provenance is written beside the mask, as the CLI does; a clean save
clears the layer's recovery copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Labels

from napari_medai._napari.autosave import saved_cleanly
from napari_medai._napari.generation import is_synthetic
from napari_medai._napari.scan_grid import labels_to_save, open_scans
from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.files import compound_stem
from napari_medai.core.io.writing import (
    label_sidecar,
    write_label_map,
    write_sidecar,
)
from napari_medai.core.volume import LabelMap


def _check_shape(layer: Labels, path: Path) -> None:
    # Raised as GeometryError, not ValueError: napari turns a writer's ValueError
    # into "not a valid writer" and drops the message.
    ndim = layer.data.ndim
    if ndim != 3:
        shape = " x ".join(str(n) for n in layer.data.shape)
        advice = (
            "draw labels on a 3D scan opened with napari-medai"
            if ndim < 3
            else "a label map is one 3D volume; save one time point or channel as its own layer"
        )
        raise GeometryError(
            f'Cannot save "{layer.name}" as "{path.name}": it is {ndim}D ({shape}); '
            f"napari-medai saves 3D label maps on a scan's grid ({advice})"
        )


def _sidecar(label_map: LabelMap, provenance: dict[str, Any], mask: Path) -> dict[str, Any]:
    model = (
        {key: provenance.get(key) for key in ("source", "sha256")} | {"name": provenance["model"]}
        if "model" in provenance
        else None
    )
    return label_sidecar(
        label_map,
        input_name=provenance.get("image") or provenance.get("source"),
        outputs={"labels": mask.name},
        provenance=provenance,
        model=model,
        settings=provenance.get("config"),
    )


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer to .nii.gz, .nii, .nrrd or .mha, plus a ``.json`` sidecar.

    napari's save dialog has already asked before replacing a file. Masks of
    generated samples are refused: they belong to no scan.
    """
    if is_synthetic(meta.get("metadata", {})):
        raise MedaiError(
            f"'{meta.get('name', 'this layer')}' holds masks of synthetic samples, not of a "
            "patient's scan; save samples with 'napari-medai gan sample' instead"
        )
    target = Path(path)
    layer = Labels(np.asarray(data), **meta)
    _check_shape(layer, target)
    viewer = napari.current_viewer()
    scans = open_scans(viewer.layers) if viewer else []
    label_map, provenance = labels_to_save(layer, scans)
    written = write_label_map(label_map, target, overwrite=True)
    sidecar = written.with_name(compound_stem(written) + ".json")
    write_sidecar(_sidecar(label_map, provenance, written), sidecar, overwrite=True)
    saved_cleanly(data)
    return [str(written), str(sidecar)]
