"""Read a label file for the CLI: NIfTI/NRRD/MHA with its label names, or a SEG/RTSTRUCT."""

from __future__ import annotations

import json
from pathlib import Path

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import compound_stem
from napari_medai.core.volume import LabelMap, Volume


def read_labels(path: Path, reference: Volume | None = None) -> LabelMap:
    """The label map at ``path``; names from its 3D Slicer NRRD header or ``<stem>.json``.

    A DICOM-SEG or RTSTRUCT is placed on ``reference``, the scan it was drawn on.
    """
    from napari_medai.core.io.dicom_derived import derived_kind
    from napari_medai.core.io.labels import header_label_names
    from napari_medai.core.io.reading import read_label_map

    kind = derived_kind(path)
    if kind is not None:
        if reference is None:
            raise MedaiError(f"{path.name} is a {kind}: give the scan it was drawn on as well")
        if kind == "DICOM-SEG":
            from napari_medai.core.io.dicom_seg import read_dicom_seg

            return read_dicom_seg(path, reference)
        from napari_medai.core.io.rtstruct import read_rtstruct

        return read_rtstruct(path, reference)

    labels = read_label_map(path, reference)
    labels.label_names = header_label_names(path)
    sidecar = path.with_name(compound_stem(path) + ".json")
    if sidecar.is_file() and not labels.label_names:
        try:
            names = json.loads(sidecar.read_text(encoding="utf-8")).get("label_names", {})
            labels.label_names = {int(k): str(v) for k, v in names.items()}
        except (ValueError, AttributeError):
            pass  # a sidecar of another shape holds no names; numbers stand in
    return labels
