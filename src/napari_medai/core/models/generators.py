"""Generator and discriminator networks, built from MONAI parts named in a card.

Unconditional: MONAI's ``Generator`` (latent vector -> transposed convolutions,
DCGAN-like) with a ``tanh`` on top. Conditional: MONAI's ``SPADENet`` decoder
without its VAE encoder (label map -> image, SPADE normalisation). The critic
is MONAI's ``PatchDiscriminator`` trained with ``PatchAdversarialLoss``.
Hand-written here, because MONAI has no such thing: the ``tanh`` head, the
one-output wrapper round ``SPADENet`` (which returns a tuple), and the noise
channel appended to the label map so one mask can give several images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers import Act, Norm
from monai.networks.nets import Generator, PatchDiscriminator, SPADENet

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import ModelCard

UNCONDITIONAL = "UpsampleGenerator"
#: Packages trained before the upsampling generator (transposed convolutions) still load.
TRANSPOSED = "DCGANGenerator"
CONDITIONAL = "SPADEGenerator"
#: Channel widths from the coarsest (1/16 of the patch) to the finest layer.
DCGAN_CHANNELS = [128, 64, 32, 16]
SPADE_CHANNELS = [16, 32, 64]
SPADE_HIDDEN = 32


class _TanhGenerator(torch.nn.Module):
    """MONAI ``Generator`` whose output is squashed into [-1, 1]."""

    def __init__(self, latent_dim: int, patch: int, channels: list[int]) -> None:
        super().__init__()
        start = patch // 2 ** len(channels)
        self.net = Generator(
            latent_shape=(latent_dim,),
            start_shape=(channels[0], start, start),
            channels=[*channels[1:], 1],
            strides=[2] * len(channels),
            num_res_units=0,
            act=Act.RELU,
            norm=Norm.BATCH,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z))


class _UpsampleGenerator(torch.nn.Module):
    """Latent vector -> image by nearest-neighbour upsampling and 3x3 convolutions (MONAI blocks).

    MONAI's ``Generator`` upsamples with stride-2 transposed 3x3 convolutions, whose
    uneven kernel overlap prints a grid on every sample (peaks at multiples of 1/16
    of the patch in the spectrum) that a two-sample classifier spots at once
    (Odena et al. 2016, "Deconvolution and checkerboard artifacts").
    """

    def __init__(self, latent_dim: int, patch: int, channels: list[int]) -> None:
        super().__init__()
        self.start = (channels[0], patch // 2 ** len(channels), patch // 2 ** len(channels))
        self.project = torch.nn.Linear(latent_dim, int(np.prod(self.start)))
        widths = [*channels, channels[-1]]
        layers: list[torch.nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers.append(
                UpSample(
                    2,
                    scale_factor=2,
                    mode="nontrainable",
                    interp_mode="nearest",
                    align_corners=None,
                )
            )
            layers.append(
                Convolution(2, width_in, width_out, kernel_size=3, act=Act.RELU, norm=Norm.BATCH)
            )
        layers.append(Convolution(2, widths[-1], 1, kernel_size=3, conv_only=True))
        self.body = torch.nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(self.project(z).view(len(z), *self.start)))


class _SpadeGenerator(torch.nn.Module):
    """MONAI ``SPADENet`` decoder (no encoder): one-hot labels plus a noise channel -> image."""

    def __init__(self, label_channels: int, patch: int, channels: list[int]) -> None:
        super().__init__()
        self.net = SPADENet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            label_nc=label_channels + 1,
            input_shape=(patch, patch),
            channels=list(channels),  # SPADENet reverses and extends the list it is given
            is_vae=False,
            spade_intermediate_channels=SPADE_HIDDEN,
            last_act="TANH",
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.net(condition)[0]


def generator_args(kind: str, patch: int, latent_dim: int) -> tuple[str, dict[str, Any]]:
    """The card's architecture name and arguments for a new generator."""
    if kind == "conditional":
        return CONDITIONAL, {"channels": list(SPADE_CHANNELS)}
    return UNCONDITIONAL, {"latent_dim": latent_dim, "channels": list(DCGAN_CHANNELS)}


def build_generator(card: ModelCard) -> torch.nn.Module:
    """The untrained generator a generation card describes."""
    args = card.architecture_args
    patch = int(card.patch_size[-1])
    try:
        if card.architecture == UNCONDITIONAL:
            return _UpsampleGenerator(int(args["latent_dim"]), patch, list(args["channels"]))
        if card.architecture == TRANSPOSED:
            return _TanhGenerator(int(args["latent_dim"]), patch, list(args["channels"]))
        if card.architecture == CONDITIONAL:
            return _SpadeGenerator(len(card.label_names), patch, list(args["channels"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"cannot build {card.architecture} with {args}: {error}") from error
    raise ModelLoadError(
        f"unknown generator {card.architecture!r}; known: {UNCONDITIONAL}, {TRANSPOSED}, "
        f"{CONDITIONAL}"
    )


def build_discriminator(in_channels: int) -> torch.nn.Module:
    """A PatchGAN critic: one score per receptive field of about 30 pixels.

    16 base channels: 2.5x cheaper per step on a CPU than 32, so more steps fit a budget.
    """
    return PatchDiscriminator(
        spatial_dims=2, channels=16, in_channels=in_channels, num_layers_d=3, norm="INSTANCE"
    )


def label_channels(labels: torch.Tensor, values: list[int]) -> torch.Tensor:
    """One-hot (B, len(values), y, x) of a (B, y, x) label batch; unknown values are background."""
    return torch.stack([labels == v for v in values], dim=1).float()


def condition(onehot: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The generator's input: the one-hot label map plus one channel of Gaussian noise."""
    noise = torch.randn(
        (onehot.shape[0], 1, *onehot.shape[2:]), generator=generator, dtype=onehot.dtype
    )
    return torch.cat([onehot, noise.to(onehot.device)], dim=1)


def latent(count: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latent vectors for the unconditional generator."""
    return torch.randn((count, dim), generator=generator)


def grid(patches: np.ndarray, columns: int = 4) -> np.ndarray:
    """Tile (n, y, x) patches into one (rows*y, columns*x) preview image."""
    n, height, width = patches.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * height, columns * width), dtype=np.float32)
    for index, patch in enumerate(patches):
        r, c = divmod(index, columns)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = patch
    return canvas
