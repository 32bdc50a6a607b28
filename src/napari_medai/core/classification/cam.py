"""Grad-CAM heat maps with MONAI's ``GradCAM`` / ``GradCAMpp``.

MONAI's CAM wraps the network with hooks that stay registered and switches
in-place activations off, so the maps are computed on a private copy of the
network and the user's model is left as it was. MONAI scores a batch as
``logits[:, class_idx]``, which mixes samples when ``class_idx`` differs
between them; each batch is therefore split by target class. MONAI's
``GradCAMpp`` multiplies the per-sample scores into the gradients without
aligning the batch axis, so it is run one sample at a time.
"""

from __future__ import annotations

import copy

import torch
from monai.visualize import GradCAM, GradCAMpp

from napari_medai.core.classification.config import ClassificationError


def _unit_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum, so 0 stays 0 and the hottest voxel is 1.

    Instead of MONAI's default post-processing, which maps (min, max) to (1, 0):
    inverted, and a min-max stretch would make the coolest voxel 0 however warm.
    """
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    return maps / peak.view(-1, *[1] * (maps.ndim - 1))


def spatial_layers(network: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of leaf modules with a spatial output for ``sample``, in the order they ran.

    The last one whose output is bigger than one voxel is the usual Grad-CAM
    target (the deepest feature map before pooling).
    """
    order: list[tuple[str, int]] = []
    handles = []
    for name, module in network.named_modules():
        if name and not list(module.children()):

            def hook(_module, _inputs, output, name=name):
                if isinstance(output, torch.Tensor) and output.ndim == sample.ndim:
                    order.append((name, int(output[0, 0].numel())))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            network(sample)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, _ in order]
    wide = [name for name, voxels in order if voxels > 1]
    ordered = wide or names
    return list(dict.fromkeys(reversed(ordered)))[::-1]


class HeatMaps:
    """Computes CAMs for batches on a copy of ``network``."""

    def __init__(
        self,
        network: torch.nn.Module,
        sample: torch.Tensor,
        method: str = "gradcam",
        layer: str | None = None,
    ) -> None:
        if isinstance(network, torch.jit.ScriptModule):
            raise ClassificationError(
                "Grad-CAM needs the network's layers, which a TorchScript file hides; "
                "use a model package or checkpoint for heat maps"
            )
        self.network = copy.deepcopy(network).eval()
        layers = spatial_layers(self.network, sample)
        if not layers:
            raise ClassificationError("the network has no layer with a spatial output for Grad-CAM")
        if layer is None:
            layer = layers[-1]
        elif layer not in dict(self.network.named_modules()):
            raise ClassificationError(
                f"the network has no layer {layer!r}; layers with a feature map include "
                f"{', '.join(layers[-5:])}"
            )
        self.layer = layer
        self.one_by_one = method == "gradcampp"
        factory = GradCAMpp if self.one_by_one else GradCAM
        self.cam = factory(self.network, target_layers=layer, postprocessing=_unit_max)

    def __call__(self, batch: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """(B, *spatial) maps in [0, 1] for each sample's class in ``classes``."""
        out = torch.zeros((batch.shape[0], *batch.shape[2:]), dtype=torch.float32)
        with torch.enable_grad():
            for target in sorted(set(classes)):
                rows = [i for i, c in enumerate(classes) if c == target]
                groups = [[row] for row in rows] if self.one_by_one else [rows]
                for group in groups:
                    maps = self.cam(batch[group], class_idx=target)
                    out[group] = maps[:, 0].detach().float().cpu()
        return out

    def close(self) -> None:
        """Drop the hooked copy."""
        self.network = None  # type: ignore[assignment]
        self.cam = None  # type: ignore[assignment]
