"""Build MONAI networks named in a model card (an allow-list, no imports by name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks import nets

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import GENERATION_TASK, ModelCard
from napari_medai.core.models.generators import build_generator

#: Architectures a card may name. Extending this list is a code change, never a
#: string in a file, so a card cannot make us import anything.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "UNet": nets.UNet,
    "BasicUNet": nets.BasicUNet,
    "SegResNet": nets.SegResNet,
    "SwinUNETR": nets.SwinUNETR,
    "DynUNet": nets.DynUNet,
}


def _resnet(factory: Callable[..., nets.ResNet]) -> Callable[..., torch.nn.Module]:
    """MONAI's ResNet under the card's argument names; never downloads pretrained weights."""

    def build(in_channels: int, out_channels: int, **args: Any) -> torch.nn.Module:
        args.pop("pretrained", None)
        return factory(n_input_channels=in_channels, num_classes=out_channels, **args)

    return build


#: Classification architectures (``task: "classification"``): the output is one
#: logit per class. ``DenseNet`` takes its block sizes from the card, so small
#: fast networks need no code.
CLASSIFIERS: dict[str, Callable[..., torch.nn.Module]] = {
    "DenseNet": nets.DenseNet,
    "DenseNet121": nets.DenseNet121,
    **{name: _resnet(getattr(nets, name)) for name in ("resnet10", "resnet18", "resnet34")},
}
ARCHITECTURES.update(CLASSIFIERS)


def build_network(card: ModelCard) -> torch.nn.Module:
    """Instantiate the card's architecture with its arguments (untrained)."""
    if card.task == GENERATION_TASK:
        return build_generator(card)
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
