"""What a classification run is asked to do, and what it gives back (torch-free).

The widget, the CLI and scripts fill in the same :class:`ClassifyConfig` (and
:class:`ClassifierTrainConfig` to train one), so napari builds them without
importing torch; :class:`Region` boxes are in voxel indices of the scan,
(z, y, x) order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medai.core.errors import MedaiError
from napari_medai.core.models.card import LIMITS
from napari_medai.core.training.config import checkpoints_folder
from napari_medai.core.volume import Volume

#: The task a classifier's model card names.
TASK = "classification"
SCOPES = ("volume", "slices", "regions")
CAM_METHODS = ("gradcam", "gradcampp")
AXIS_NAMES = {"z": 0, "y": 1, "x": 2}

#: A small DenseNet with one dense block: learns organ boxes in seconds on a laptop CPU, and a
#: 32-pixel box keeps an 8x8 feature map for Grad-CAM (two blocks pool it to 4x4, whose heat
#: smears over the box: on the kidney benchmark, heat inside/outside the kidney 1.75 against
#: 1.32, mean of four seeds).
DEFAULT_ARCHITECTURE = "DenseNet"
DEFAULT_ARGS = {"init_features": 16, "growth_rate": 12, "block_config": [6], "bn_size": 2}


class ClassificationError(MedaiError):
    """A model, box set or example set cannot be used for classification."""


@dataclass
class ClassifyConfig:
    """How to classify.

    ``scope`` is the whole ``volume``, every slice along ``axis`` (0, 1, 2 for
    z, y, x), or the boxes given to the job (``regions``). ``cam`` also makes
    a Grad-CAM heat map on the scan's grid, for ``cam_class`` (default: each
    input's predicted class) at ``cam_layer`` (default: the network's last
    layer with a spatial output). ``cam_context`` widens each box by that
    many network pixels of surrounding scan on each side for its heat map,
    which is then cropped back to the box (see
    :mod:`~napari_medai.core.classification.context`); 0 uses the box alone.
    ``batch_size`` of ``None`` grows the batch while a network call stays
    short (Cancel acts between calls).
    """

    scope: str = "volume"
    axis: int = 0
    device: str = "auto"
    cam: bool = False
    cam_method: str = "gradcam"
    cam_class: int | None = None
    cam_layer: str | None = None
    cam_context: int = 16
    batch_size: int | None = None

    def check(self) -> None:
        """Raise :class:`ClassificationError` for a setting that cannot work."""
        if self.scope not in SCOPES:
            raise ClassificationError(
                f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}"
            )
        if self.axis not in (0, 1, 2):
            raise ClassificationError(
                f"the slice axis must be 0, 1 or 2 (z, y, x), not {self.axis}"
            )
        if self.cam_method not in CAM_METHODS:
            raise ClassificationError(
                f"unknown CAM method {self.cam_method!r}; choose one of {', '.join(CAM_METHODS)}"
            )
        if self.cam_context < 0:
            raise ClassificationError(
                f"the CAM context must be 0 or more pixels, not {self.cam_context}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ClassificationError(f"the batch size must be at least 1, not {self.batch_size}")


@dataclass
class ClassifierTrainConfig:
    """How to train a classifier; the widget and the CLI fill in the same object.

    ``out_dir`` receives the kept model package, ``checkpoint_dir`` (default
    ``<out_dir>.checkpoints``) the last one for ``resume``. Without explicit
    validation examples, ``test_fraction`` of the slice positions (one block
    of neighbouring slices, see ``spatial_split``) is held out; 0 holds
    nothing out and keeps the last weights. ``name``
    defaults to the class names (see :func:`default_model_name`).
    """

    out_dir: Path
    max_time_s: float | None = 60.0
    max_iters: int | None = None
    seed: int | None = None
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    test_fraction: float = 0.3
    validation_every_s: float = 2.0
    checkpoint_every_s: float = 30.0
    architecture: str = DEFAULT_ARCHITECTURE
    architecture_args: dict[str, Any] | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    num_threads: int | None = None
    name: str | None = None
    checkpoint_dir: Path | None = None

    @property
    def checkpoints(self) -> Path:
        """Where the last checkpoint and the training state live."""
        return checkpoints_folder(self.out_dir, self.checkpoint_dir)

    def check(self) -> None:
        """Raise :class:`ClassificationError` for a budget or batch that cannot work."""
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ClassificationError(f"the time budget must be positive, not {self.max_time_s} s")
        if self.max_iters is not None and self.max_iters < 1:
            raise ClassificationError(
                f"the iteration budget must be at least 1, not {self.max_iters}"
            )
        if self.batch_size < 1:
            raise ClassificationError(f"the batch size must be at least 1, not {self.batch_size}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ClassificationError(
                f"the held-out fraction must be at least 0 and below 1, not {self.test_fraction}"
            )


def default_model_name(class_names: dict[int, str], limit: int = LIMITS.name_chars) -> str:
    """The class names joined by " / ", cut to ``limit`` characters with "and N more".

    The card refuses a longer name, and many long class names would otherwise
    refuse the training they name.
    """
    names = [class_names[k] for k in sorted(class_names)]
    for shown in range(len(names), 0, -1):
        rest = len(names) - shown
        text = " / ".join(names[:shown]) + (f" and {rest} more" if rest else "")
        if len(text) <= limit:
            return text
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return names[0][: limit - len(more) - 3] + "..." + more


def parse_axis(text: str | int) -> int:
    """An axis given as 0/1/2 or z/y/x."""
    value = str(text).strip().lower()
    if value in AXIS_NAMES:
        return AXIS_NAMES[value]
    if value in ("0", "1", "2"):
        return int(value)
    raise ClassificationError(f"unknown slice axis {text!r}; use z, y or x (or 0, 1, 2)")


@dataclass(frozen=True)
class Region:
    """A box of voxels: ``start`` inclusive, ``stop`` exclusive, (z, y, x) indices.

    A 2D box on slice ``z`` has ``stop[0] == start[0] + 1``.
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @classmethod
    def around(cls, centre: tuple[float, float, float], size: tuple[int, int, int]) -> Region:
        """The box of ``size`` voxels centred on ``centre`` (a point in voxel indices).

        The centre is snapped to a millionth of a voxel first: a point placed on
        slice 17 comes back from world coordinates as 16.9999999 on an oblique
        or flipped scan, and must not land on slice 16.
        """
        snapped = (round(c, 6) for c in centre)
        start = tuple(math.floor(c + 0.5 - s / 2.0) for c, s in zip(snapped, size))
        return cls(start, tuple(a + int(s) for a, s in zip(start, size)))  # type: ignore[arg-type]

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxels along (z, y, x)."""
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def describe(self) -> str:
        """A short text for messages, e.g. ``z 12, y 30-62, x 40-72``."""
        parts = []
        for name, a, b in zip("zyx", self.start, self.stop):
            parts.append(f"{name} {a}" if b == a + 1 else f"{name} {a}-{b - 1}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-friendly form."""
        return {"start": list(self.start), "stop": list(self.stop)}


def check_slices(indices: Sequence[int], count: int, axis: int, image: str) -> None:
    """Refuse a slice index outside the ``count`` slices of ``image`` along ``axis``."""
    outside = [i for i in indices if not 0 <= i < count]
    if outside:
        raise ClassificationError(
            f"slice {outside[0]} is outside {image}, which has {count} slices along "
            f"{'zyx'[axis]} (0-{count - 1})"
        )


def check_regions(regions: list[Region], shape: tuple[int, int, int]) -> None:
    """Refuse no boxes, empty boxes and boxes entirely outside a grid of ``shape``.

    A box that only partly leaves the image is kept; the outside is padded.
    """
    if not regions:
        raise ClassificationError(
            "no boxes to classify: draw rectangles in a Shapes layer, or add points and a box size"
        )
    for number, region in enumerate(regions, 1):
        if min(region.size) < 1:
            raise ClassificationError(f"box {number} ({region.describe()}) is empty")
        outside = any(b <= 0 or a >= n for a, b, n in zip(region.start, region.stop, shape))
        if outside:
            raise ClassificationError(
                f"box {number} ({region.describe()}) lies outside the image "
                f"({shape[0]} x {shape[1]} x {shape[2]} voxels)"
            )


@dataclass
class Prediction:
    """One classified input: the winning class and every class's probability."""

    index: int
    label: int
    name: str
    probability: float
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "index": self.index,
            "class": self.name,
            "label": self.label,
            "probability": round(self.probability, 6),
            "probabilities": [round(p, 6) for p in self.probabilities],
        }


@dataclass
class ClassifyResult:
    """Predictions in input order (one, one per slice, or one per box), plus the CAM.

    ``class_names`` maps output channel (the class label) to name; ``cam`` is the heat map on
    the scan's own grid (geometry equal to the scan's), in [0, 1].
    """

    scope: str
    predictions: list[Prediction]
    class_names: dict[int, str]
    cam: Volume | None = None
    regions: list[Region] = field(default_factory=list)
    axis: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self, model_name: str) -> str:
        """One line for the dock: what was classified, and how a box model read the slices."""
        noun = {"volume": "volume", "slices": "slices", "regions": "boxes"}[self.scope]
        text = f"{len(self.predictions)} {noun} classified with {model_name}"
        windows = self.provenance.get("slices_read_as_windows")
        if windows:
            height, width = windows["box"]
            text += f", each read as {height}x{width}-pixel windows like the boxes it learnt from"
        return text

    def curve(self, label: int) -> list[float]:
        """The probability of class ``label`` for every input (the per-slice curve)."""
        return [p.probabilities[label] for p in self.predictions]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        out: dict[str, Any] = {
            "scope": self.scope,
            "classes": {str(k): v for k, v in sorted(self.class_names.items())},
            "predictions": [p.to_dict() for p in self.predictions],
            "provenance": self.provenance,
        }
        if self.scope == "slices":
            out["axis"] = "zyx"[self.axis]
        if self.regions:
            for prediction, region in zip(out["predictions"], self.regions):
                prediction["box"] = region.to_dict()
        return out


@dataclass
class TrainedClassifier:
    """A finished training run as napari's process receives it from the worker.

    Torch-free (unlike the trainer's own result), so unpickling it never
    imports torch: the kept model's folder, its held-out figures (None when
    nothing was held out) and, in words, which weights were kept and why.
    """

    best_path: Path
    metrics: dict[str, Any] | None
    kept: str
