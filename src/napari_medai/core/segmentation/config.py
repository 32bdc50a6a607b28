"""What a segmentation run is asked to do and what it returns, without importing torch.

The widgets and the CLI build a :class:`SegmentConfig` while they start up;
:mod:`~napari_medai.core.segmentation.inference`, which needs torch and MONAI,
is imported only when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_medai.core.volume import LabelMap, Volume


@dataclass
class SegmentConfig:
    """How to run a model; the widget and the CLI fill in the same object."""

    device: str = "auto"  # auto | cpu | cuda | mps
    tta: bool = False  # flip test-time augmentation
    probabilities: bool = False  # also return the foreground probability map
    uncertainty: bool = False  # also return a per-voxel uncertainty map
    overlap: float = 0.25
    #: Windows per network call; ``None`` picks 4 on a GPU and 1 on the CPU,
    #: where one call of four 96^3 windows takes seconds and would make
    #: Cancel (which acts between calls) slow.
    window_batch: int | None = None


@dataclass
class SegmentResult:
    """Outputs on the source grid, plus how they were made.

    ``probability`` is the foreground probability (1 - p(background));
    ``uncertainty`` the entropy of the class probabilities divided by
    log(classes), so in [0, 1]; with TTA instead the flips' disagreement: their
    mutual information (entropy of the mean minus the mean entropy, divided
    the same way), which is 0 where every flip predicts the same.
    """

    labels: LabelMap
    probability: Volume | None
    uncertainty: Volume | None
    provenance: dict
