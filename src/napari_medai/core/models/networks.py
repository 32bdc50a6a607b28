"""Build MONAI networks named in a model card (an allow-list, no imports by name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks import nets

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import ModelCard

#: Architectures a card may name. Extending this list is a code change, never a
#: string in a file, so a card cannot make us import anything.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "UNet": nets.UNet,
    "BasicUNet": nets.BasicUNet,
    "SegResNet": nets.SegResNet,
    "SwinUNETR": nets.SwinUNETR,
    "DynUNet": nets.DynUNet,
}


def build_network(card: ModelCard) -> torch.nn.Module:
    """Instantiate the card's architecture with its arguments (untrained)."""
    factory = ARCHITECTURES.get(card.architecture)
    if factory is None:
        raise ModelLoadError(
            f"unknown architecture {card.architecture!r}; known: {', '.join(ARCHITECTURES)}"
        )
    args: dict[str, Any] = {
        "spatial_dims": card.spatial_dims,
        "in_channels": card.in_channels,
        "out_channels": card.num_classes,
        **card.architecture_args,
    }
    try:
        return factory(**args)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelLoadError(f"cannot build {card.architecture} with {args}: {error}") from error
