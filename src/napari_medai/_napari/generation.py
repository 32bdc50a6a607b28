"""napari side of Generate: synthetic samples as layers, and the shared augmentation strengths.

Sample layers are never placed in a patient's world coordinates: they get
their own scale (the training pixel spacing, one unit between samples), no
affine, a name starting with "synthetic" and ``synthetic: True`` in their
metadata (top level and under ``napari_medai``), which the writer refuses.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.types import LayerDataTuple

from napari_medai._napari.layers import METADATA_KEY
from napari_medai.core.generative.config import SYNTHETIC_PREFIX
from napari_medai.core.training.strengths import AugmentStrengths

_STRENGTHS: weakref.WeakKeyDictionary[Any, AugmentStrengths] = weakref.WeakKeyDictionary()


def set_augmentation(viewer: Any, strengths: AugmentStrengths) -> None:
    """Make ``strengths`` the augmentation the Train widget of ``viewer`` uses."""
    _STRENGTHS[viewer] = strengths


def augmentation_for(viewer: Any) -> AugmentStrengths:
    """The augmentation strengths chosen in ``viewer`` (defaults when none were)."""
    return _STRENGTHS.get(viewer, AugmentStrengths())


def is_synthetic(metadata: dict[str, Any]) -> bool:
    """Whether a layer's metadata marks it as generated, not patient data."""
    return bool(metadata.get("synthetic") or metadata.get(METADATA_KEY, {}).get("synthetic"))


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic": True, METADATA_KEY: {"synthetic": True, **info}}


def synthetic_layers(samples: Any, title: str) -> list[LayerDataTuple]:
    """An image stack (one sample per slice) and, for paired samples, a Labels stack."""
    spacing = (1.0, *samples.pixel_spacing_mm)
    name = f"{SYNTHETIC_PREFIX} {title}"
    images = np.asarray(samples.images)
    low, high = (float(v) for v in np.percentile(images, [0.5, 99.5]))
    layers: list[LayerDataTuple] = [
        (
            images,
            {
                "name": name,
                "scale": spacing,
                "units": ("mm", "mm", "mm"),
                "metadata": _metadata(dict(samples.metadata)),
                "contrast_limits": (low, high if high > low else low + 1.0),
                "colormap": "gray",
            },
            "image",
        )
    ]
    if samples.masks is not None:
        names = {str(k): v for k, v in samples.label_names.items()}
        layers.append(
            (
                np.asarray(samples.masks).astype(np.int32),
                {
                    "name": f"{name} masks",
                    "scale": spacing,
                    "units": ("mm", "mm", "mm"),
                    "metadata": _metadata({**samples.metadata, "label_names": names}),
                    "opacity": 0.5,
                },
                "labels",
            )
        )
    return layers


def preview_layer(grid: np.ndarray, spacing: tuple[float, float], name: str) -> LayerDataTuple:
    """A 2D preview grid (training previews or augmented slices), marked synthetic."""
    return (
        np.asarray(grid, dtype=np.float32),
        {
            "name": f"{SYNTHETIC_PREFIX} {name}",
            "scale": spacing,
            "units": ("mm",) * len(spacing),
            "metadata": _metadata({}),
        },
        "image",
    )


def add_or_update(viewer: Any, layer_data: LayerDataTuple) -> Any:
    """Add the layer, or replace the data of the synthetic layer of that name."""
    data, kwargs, kind = layer_data
    for layer in viewer.layers:
        if layer.name == kwargs["name"] and is_synthetic(layer.metadata):
            layer.data = data
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            return layer
    return getattr(viewer, f"add_{kind}")(data, **kwargs)
