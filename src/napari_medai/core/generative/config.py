"""What a GAN run needs to know; torch-free so widgets and the CLI import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari_medai.core.errors import MedaiError

#: noise -> image patch, or label map -> image patch (SPADE, pix2pix-style).
KINDS = ("unconditional", "conditional")
#: Patch edges must halve four times (the generators start at 1/16 of the patch).
PATCH_MULTIPLE = 16
#: Name prefix and metadata flag of every generated layer or file.
SYNTHETIC_PREFIX = "synthetic"


class GenerativeError(MedaiError):
    """A GAN cannot be trained or sampled with this input."""


@dataclass
class GanConfig:
    """How to train a GAN on 2D axial patches of one scan.

    ``kind`` "unconditional" learns noise -> patch; "conditional" learns label
    map -> patch and needs labels. With labels (either kind), patches come from
    the labelled axial slices only, half of them centred on a labelled voxel
    (training "inside a mask"); without, from anywhere in the scan.
    ``holdout_every`` keeps every n-th axial slice out of training; quality is
    measured on patches of those slices. Budgets: ``max_time_s`` seconds of
    training, ``max_iters`` steps (either may be None, not both).
    ``budget_clock`` "wall" counts elapsed seconds, "cpu" this process's CPU
    seconds (benchmarks on a shared machine: the same work whatever the load).
    ``preview_every_s`` sets how often a preview grid rides on a progress event.
    Quality is measured on ``quality_samples`` patches, the two-sample
    classifier trained for ``quality_steps`` steps.
    """

    out_dir: Path
    kind: str = "unconditional"
    patch_size: int = 64
    max_time_s: float | None = 60.0
    max_iters: int | None = None
    batch_size: int = 16
    latent_dim: int = 64
    learning_rate: float = 2e-4
    l1_weight: float = 10.0
    seed: int | None = None
    holdout_every: int = 5
    preview_every_s: float = 3.0
    quality_samples: int = 128
    quality_steps: int = 150
    device: str = "auto"
    num_threads: int | None = None
    overwrite: bool = False
    name: str | None = None
    budget_clock: str = "wall"

    def check(self) -> None:
        """Raise :class:`GenerativeError` for settings that cannot work."""
        if self.kind not in KINDS:
            raise GenerativeError(f"unknown GAN kind {self.kind!r}; choose one of {KINDS}")
        if self.patch_size < 32 or self.patch_size % PATCH_MULTIPLE:
            raise GenerativeError(
                f"the patch size must be a multiple of {PATCH_MULTIPLE} from 32 up, "
                f"not {self.patch_size}"
            )
        if self.max_time_s is None and self.max_iters is None:
            raise GenerativeError("give a time budget or an iteration budget")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise GenerativeError(f"the time budget must be positive, not {self.max_time_s} s")
        if self.max_iters is not None and self.max_iters < 1:
            raise GenerativeError(f"the iteration budget must be at least 1, not {self.max_iters}")
        if self.batch_size < 2:
            raise GenerativeError(f"the batch size must be at least 2, not {self.batch_size}")
        if self.budget_clock not in ("wall", "cpu"):
            raise GenerativeError(f"the budget clock is 'wall' or 'cpu', not {self.budget_clock!r}")
        if self.holdout_every < 2:
            raise GenerativeError("holdout_every must be 2 or more (one slice in n is held out)")
