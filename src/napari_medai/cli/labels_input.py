"""Read a label file for the CLI, with its label names from a sidecar beside it."""

from __future__ import annotations

import json
from pathlib import Path

from napari_medai.core.files import compound_stem
from napari_medai.core.volume import LabelMap, Volume


def read_labels(path: Path, reference: Volume | None = None) -> LabelMap:
    """The label map at ``path``; names come from ``<stem>.json`` (``label_names``) if present."""
    from napari_medai.core.io.reading import read_label_map

    labels = read_label_map(path, reference)
    sidecar = path.with_name(compound_stem(path) + ".json")
    if sidecar.is_file():
        try:
            names = json.loads(sidecar.read_text(encoding="utf-8")).get("label_names", {})
            labels.label_names = {int(k): str(v) for k, v in names.items()}
        except (ValueError, AttributeError):
            pass  # a sidecar of another shape holds no names; numbers stand in
    return labels
