"""How to train and what training returns, without importing torch.

The Train widget and the CLI build a :class:`TrainConfig` while they start up;
:mod:`~napari_medai.core.training.trainer`, which needs torch and MONAI, is
imported only when training starts. :func:`check_training_pairs` refuses
pairs that cannot train before then, so the dock refuses before any worker
starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.models.card import ModelCard
from napari_medai.core.training.quality import TrainingQuality
from napari_medai.core.training.strengths import SEGMENTATION_AUGMENTATION, AugmentStrengths

if TYPE_CHECKING:
    from napari_medai.core.models.loaded import LoadedModel
    from napari_medai.core.training.synthetic import SyntheticPairs
    from napari_medai.core.volume import LabelMap, Volume

DIMENSIONALITIES = ("auto", "2d", "2.5d", "3d")
#: What a time budget counts: "wall" elapsed seconds, "cpu" this process's CPU
#: seconds on every thread (the same work however busy the machine is).
BUDGET_CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "cpu": time.process_time,
}


def checkpoints_folder(out_dir: Path, checkpoint_dir: Path | None) -> Path:
    """``checkpoint_dir``, or ``<out_dir>.checkpoints`` beside the model package."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir)
    out = Path(out_dir)
    return out.with_name(out.name + ".checkpoints")


@dataclass
class TrainConfig:
    """How to train; the widget and the CLI fill in the same object.

    ``out_dir`` receives the best model as a model package (what Predict and
    ``napari-medai segment --model`` run). The last model, the optimizer state
    and the history go to ``checkpoint_dir`` (default: ``<out_dir>.checkpoints``
    beside it), from where ``resume`` continues. Budgets count this session:
    ``max_time_s`` seconds of training (time the consumer holds the job between
    progress events is not counted) and ``max_iters`` optimizer steps; with
    neither, training runs until stopped. ``budget_clock`` says what the
    seconds are (:data:`BUDGET_CLOCKS`): "wall" time, or "cpu" time of this
    process (summed over its threads), which buys the same training on a busy
    machine as on a quiet one. ``init`` fine-tunes a loaded model
    (or a model source path) instead of starting from scratch. ``patch_size``
    and ``batch_size`` of ``None`` are chosen from the data and the network.
    ``unlabelled_value`` marks voxels the user leaves open inside a painted
    slice; ``dense`` declares every voxel annotated. Validation runs every
    ``validation_every_s`` seconds (less often when it is slow); a resumed run
    compares new scores with the best score saved before. ``augment`` off
    trains on the patches as sampled (repeatable comparisons). Under
    ``torchrun`` every rank trains on ``batch_size`` patches of one global
    batch and rank 0 validates and saves (see ``core.distributed.ddp``).
    """

    out_dir: Path
    dimensionality: str = "auto"
    max_time_s: float | None = 60.0
    max_iters: int | None = None
    budget_clock: str = "wall"
    seed: int | None = None
    init: LoadedModel | str | Path | None = None
    #: AdamW's rate. The liver from 3 painted slices (bench/train_sparse.py, 5 CPU-s,
    #: seeds 0-2, batch 2) scored a mean Dice of 0.922 (CT) / 0.938 (MR) at 2e-3,
    #: 0.932 / 0.946 at 4e-3, and 0.926 (CT, min 0.912) at 8e-3.
    learning_rate: float = 4e-3
    weight_decay: float = 1e-4
    batch_size: int | None = None
    patch_size: tuple[int, int, int] | None = None
    validation_fraction: float = 0.2
    validation_every_s: float = 2.0
    checkpoint_every_s: float = 30.0
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    num_threads: int | None = None  # None: the free cores (see training_threads)
    context_slices: int = 1
    unlabelled_value: int | None = None
    dense: bool = False
    name: str | None = None
    checkpoint_dir: Path | None = None
    augment: bool = True
    #: Opt-in generated (image, mask) pairs, ``synthetic_ratio`` of each batch (see .synthetic).
    synthetic: SyntheticPairs | None = None
    synthetic_ratio: float = 0.0
    augmentation: AugmentStrengths = SEGMENTATION_AUGMENTATION

    @property
    def checkpoints(self) -> Path:
        """Where the last checkpoint and the training state live."""
        return checkpoints_folder(self.out_dir, self.checkpoint_dir)


@dataclass
class TrainResult:
    """Paths of the best and last model packages, the history, and the best model's card.

    ``history`` has one dict per optimizer step: ``iteration``, ``elapsed_s``,
    ``loss``, plus ``val_dice`` and ``val_held_out`` when validated.
    """

    best_path: Path
    last_path: Path
    history: list[dict[str, Any]]
    card: ModelCard

    @property
    def quality(self) -> TrainingQuality:
        """The best model's validation Dice and the voxel counts it learnt from."""
        return TrainingQuality.of(self.card)


def training_threads() -> int:
    """Torch threads for training: the cores other programs leave free, at least one.

    Free cores are the CPU count minus the 1-minute load average. Measured on a
    2-core machine under load: two threads fighting other processes for two
    cores ran a step 4x slower than one thread, as torch's worker threads wait
    for each other; on an idle machine every core is used. No core is held back
    for napari: training runs in the worker process below napari's CPU priority,
    so napari's event loop wins a core when it needs one (bench/gui_responsiveness.py
    --threads 2 on 2 idle cores: worst stall 30 ms while training, 5% more steps
    than one thread).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    # torch obeys OMP_NUM_THREADS too; read here so that asking does not import torch.
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        cores = min(cores, int(limit))
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - int(round(busy)))


def _has_label(values: np.ndarray, unlabelled_value: int | None) -> bool:
    """Whether any voxel holds a label (``unlabelled_value`` marks open voxels, not labels)."""
    if unlabelled_value is None:
        return bool(values.any())
    return bool(np.any((values != 0) & (values != unlabelled_value)))


def check_training_pairs(
    pairs: list[tuple[Volume, LabelMap]], unlabelled_value: int | None = None
) -> None:
    """Refuse pairs that cannot train, in the words a user can act on; needs no torch.

    Each pair's labels must lie on its image's grid and be whole numbers of
    at least 0, and some label must be painted. Image values (NaN, complex)
    are checked where training starts.
    """
    if not pairs:
        raise MedaiError("no training data: give at least one image with its labels")
    painted = False
    for number, (image, labels) in enumerate(pairs, start=1):
        name = image.metadata.get("name") or f"image {number}"
        values = labels.array
        if values.shape != image.spatial_shape or not labels.geometry.is_close(
            image.geometry, tol=1e-3
        ):
            raise GeometryError(
                f"training pair {number}: the labels (grid {values.shape}) are not on the "
                f"image's grid {image.spatial_shape}; paint them on this image or resample "
                "them onto it"
            )
        if values.dtype.kind not in "biu":
            raise MedaiError(f'the labels of "{name}" are {values.dtype}, not whole numbers')
        if values.size and values.dtype.kind == "i" and values.min() < 0:
            raise MedaiError(
                f'the labels of "{name}" hold negative values (down to {int(values.min())}); '
                "label values must be 0 (background) or positive whole numbers"
            )
        painted = painted or _has_label(values, unlabelled_value)
    if not painted:
        raise MedaiError("no annotations: paint at least one label on a slice before training")
