"""What a result layer holds, in words: the provenance kept in its metadata and its volumes.

The Segment and Train docks show these rows in their "Details" view, so the
model, its hash, the settings and the timings behind a mask are one click
away instead of hidden in ``layer.metadata``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels, Layer

from napari_medai._napari.layers import METADATA_KEY, layer_geometry
from napari_medai.core.io.writing import label_counts
from napari_medai.core.models.card import ModelCard
from napari_medai.core.training.quality import TrainingQuality

#: Settings of a run worth showing (the rest are defaults few users change).
_SETTINGS = ("device", "tta", "probabilities", "uncertainty", "overlap")

Rows = list[tuple[str, str]]


def provenance(layer: Layer) -> dict[str, Any]:
    """The provenance napari-medai stored on ``layer`` ({} when none)."""
    return dict(layer.metadata.get(METADATA_KEY, {}).get("provenance", {}))


def is_result_layer(layer: Layer | None) -> bool:
    """Whether ``layer`` holds the output of a model run (it names the model)."""
    return layer is not None and "model" in provenance(layer) and "sha256" in provenance(layer)


def label_volumes_ml(layer: Labels) -> dict[str, float]:
    """Volume in mL of each foreground label present, by the layer's label names."""
    info = layer.metadata.get(METADATA_KEY, {})
    names = {int(k): str(v) for k, v in info.get("label_names", {}).items()}
    values, counts = label_counts(np.asarray(layer.data))  # in chunks: no int64 copy
    voxel_ml = layer_geometry(layer).voxel_volume_ml()
    return {
        names.get(int(value), f"label {value}"): float(count) * voxel_ml
        for value, count in zip(values, counts, strict=True)
        if value
    }


def _seconds(durations: dict[str, float]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value:.1f} s" for key, value in durations.items())


def result_rows(layer: Layer) -> Rows:
    """Rows describing a result layer: model, hash, when, settings, timings, volumes."""
    info = provenance(layer)
    rows: Rows = [("Layer", layer.name)]
    if "model" in info:
        rows.append(("Model", str(info["model"])))
    if info.get("sha256"):
        rows.append(("SHA-256", f"{str(info['sha256'])[:16]}…"))
    if info.get("source"):
        rows.append(("From", str(info["source"])))
    if info.get("time"):
        rows.append(("Run at", str(info["time"])))
    config = info.get("config", {})
    settings = [f"{key} {config[key]}" for key in _SETTINGS if key in config]
    if info.get("device"):
        settings.insert(0, f"ran on {info['device']}")
    if settings:
        rows.append(("Settings", ", ".join(settings)))
    if info.get("durations"):
        rows.append(("Timings", _seconds(info["durations"])))
    if isinstance(layer, Labels) and layer.ndim >= 3:
        volumes = label_volumes_ml(layer)
        text = ", ".join(f"{name} {ml:.1f} mL" for name, ml in volumes.items())
        rows.append(("Volumes", text or "empty (no label voxels)"))
    return rows


def model_rows(card: ModelCard) -> Rows:
    """Rows describing a trained model from its card: labels, data, score, time."""
    info = card.training
    labels = ", ".join(name for value, name in sorted(card.label_names.items()) if value)
    rows: Rows = [("Model", card.name), ("Labels", labels)]
    if card.modality:
        rows.append(("For", card.modality + (f" {card.body_region}" if card.body_region else "")))
    if "dimensionality" in info:
        rows.append(("Network", f"{card.architecture} {info['dimensionality']}"))
    quality = TrainingQuality.of(card)
    dice = quality.val_dice
    name = quality.dice_name[0].upper() + quality.dice_name[1:]
    rows.append((name, "not measured" if dice is None else f"{dice:.3f} on {quality.measured_on}"))
    data = info.get("data") or []
    painted = sum(sum(pair.get("label_voxels", {}).values()) for pair in data)
    slices = sum(pair.get("painted_slices", {}).get("z", 0) for pair in data)
    if data:
        rows.append(("Learnt from", f"{painted} label voxels on {slices} axial slices"))
    if "iterations" in info:
        rows.append(
            ("Training", f"{info['iterations']} steps in {info.get('training_time_s', 0):.0f} s")
        )
    return rows
