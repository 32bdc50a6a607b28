"""Models trained on nibabel/MONAI arrays, run on our (z, y, x) arrays.

nibabel and MONAI index arrays as (i, j, k), the same order as ITK's index
(x, y, z); our arrays are (z, y, x). Their orientation codes ("axcodes") name
the anatomical direction each array axis points to, in that (i, j, k) order,
which is exactly what an ITK ``DICOMOrient`` code names for (x, y, z): RAS means
i points to the patient's right, j anterior, k superior in both. The letters are
anatomical, not tied to a RAS or LPS world frame, so they carry over unchanged
(flipping them to "LPS" would mirror the input). What differs is only the array
axis order, which :class:`ReversedAxes` undoes around the network.
"""

from __future__ import annotations

import torch

from napari_medai.core.errors import ModelLoadError

_AXIS_PAIRS = ("LR", "PA", "IS")


def itk_orientation_from_axcodes(axcodes: str, source: str) -> str:
    """The ITK orientation code for nibabel/MONAI ``axcodes`` (same letters, checked)."""
    code = "".join(axcodes).upper()
    axes_named = sorted(next((i for i, p in enumerate(_AXIS_PAIRS) if c in p), -1) for c in code)
    if len(code) != 3 or axes_named != [0, 1, 2]:
        raise ModelLoadError(
            f"{source}: orientation {axcodes!r} is not a 3D code naming each of L/R, P/A, I/S once"
        )
    return code


class ReversedAxes(torch.nn.Module):
    """Wrap a network that expects (N, C, i, j, k) so it takes (N, C, z, y, x).

    Input and output spatial axes are reversed; channels and batch stay.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the wrapped network with the spatial axes reversed on the way in and out."""
        return self.network(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)
