"""The model card: everything needed to run a model again, nothing executable.

A model package is a folder holding ``card.json`` and ``model.safetensors``.
The card names a built-in MONAI architecture and its arguments; loading never
imports code named in a file.

A card may come from anywhere, so every field is checked like untrusted input:
its type, and a range wide enough for any real model but narrow enough that no
value makes a run absurd (see :class:`CardLimits`). A bad field is refused in
one line naming the field (and the file, when read from one).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from napari_medai.core.errors import ModelLoadError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT_VERSION = 1

#: Intensity normalisations a card may name (see ``core.models.preprocessing``):
#: ``{"kind": "window", "low": -160, "high": 240}`` clips and scales a CT window,
#: ``{"kind": "percentile", "low": 0.5, "high": 99.5}`` scales MR by percentiles,
#: ``{"kind": "zscore"}`` standardises over non-zero voxels, ``{"kind": "none"}``.
INTENSITY_KINDS = ("window", "percentile", "zscore", "none")

#: The card task of a generator package (an image GAN; it segments nothing).
GENERATION_TASK = "generation"
#: What a card's ``task`` may say: the tasks napari-medai trains or runs
#: (classification's task name is also kept in its own module;
#: tests/core/test_card_validation.py checks it is listed here).
TASKS = ("segmentation", "classification", GENERATION_TASK, "brain extraction")
#: Tasks whose models output a label map (brain extraction yields a brain mask).
SEGMENTATION_TASKS = ("segmentation", "brain extraction")


@dataclass(frozen=True)
class CardLimits:
    """The bounds a card's fields must keep, in one place, each with its reason."""

    #: Output file names are "<scan>_<card name>_<suffix>" (cli segment/classify)
    #: and file systems refuse names over 255 bytes; 100 characters leave the scan
    #: name room. Names made of other characters only get shorter there.
    name_chars: int = 100
    #: A label name becomes a DICOM-SEG Segment Label or RTSTRUCT ROI Name (VR LO:
    #: at most 64 characters).
    label_name_chars: int = 64
    #: The network outputs one channel per label value up to the largest, kept
    #: over the whole scan; TotalSegmentator, the largest public model, has 117.
    largest_label: int = 255
    #: A patch edge: CT slices are 512 voxels, the finest clinical matrices 1024.
    patch_edge: int = 1024
    #: A whole patch: the largest public 3D patches are near 128^3 and 2D ones
    #: 1024^2; 256^3 leaves room while a patch's activations still fit in memory.
    patch_voxels: int = 256**3
    #: Input channels: multi-parametric MR uses 4, a 2.5D model 2 x context + 1.
    in_channels: int = 16
    #: Neighbouring slices each side for 2.5D models (2 x 7 + 1 = 15 channels).
    context_slices: int = 7
    #: Model spacing (mm): from preclinical micro-CT (about 0.02 mm) to the
    #: thickest clinical slabs (about 10 mm), with margin. Outside it a scan is
    #: resampled to an absurd grid (one voxel, or billions).
    spacing_mm: tuple[float, float] = (0.01, 50.0)
    #: Edge (voxels) of a classifier's training boxes, read back to tile slices:
    #: the Classify dock draws boxes of at most 1024; 4096 is the largest matrix.
    box_edge: float = 4096.0
    #: DICOM Modality is a CS value (at most 16 characters); a body region is free text.
    modality_chars: int = 16
    body_region_chars: int = 64
    #: Our cards are a few kilobytes; a bigger file is not a card.
    card_bytes: int = 1 << 20


LIMITS = CardLimits()


def normalise_modality(modality: str | None) -> str:
    """DICOM modality in capitals ("MR" for "mri"/"MRI"), or "" when unknown."""
    text = (modality or "").strip().upper()
    return "MR" if text == "MRI" else text


def _refuse(name: str, problem: str) -> NoReturn:
    raise ModelLoadError(f"card field '{name}' {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (a whole float such as 32.0 is accepted)."""
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        _refuse(name, f"must be a whole number, not {_shown(value)}")
    if not low <= value <= high:
        _refuse(name, f"must be between {low} and {high}, not {_shown(value)}")
    return int(value)


def _finite(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high]."""
    if not _is_number(value):
        _refuse(name, f"must be a number, not {_shown(value)}")
    if isinstance(value, int) and not -1e300 < value < 1e300:
        _refuse(name, f"is out of range ({_shown(value)})")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        _refuse(name, f"must be a number between {low:g} and {high:g}, not {_shown(value)}")
    return number


def _text(name: str, value: Any, chars: int) -> str:
    """``value`` as printable text of at most ``chars`` characters."""
    if not isinstance(value, str):
        _refuse(name, f"must be text, not {_shown(value)}")
    if len(value) > chars:
        _refuse(name, f"is {len(value)} characters long; at most {chars} are allowed")
    if not value.isprintable():
        _refuse(name, "holds control characters (such as line breaks)")
    return value


def _list(name: str, value: Any, length: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != length:
        _refuse(name, f"must be a list of {length} numbers, not {_shown(value)}")
    return value


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        _refuse(name, f"must be a JSON object, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A short description of a bad value (never its whole text)."""
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value) if _is_number(value) else f"{type(value).__name__} {value!r}"
    return text if len(text) <= 40 else text[:37] + "..."


def _label_names(value: Any) -> dict[int, str]:
    """Label values (ints, or their decimal text as JSON keys) mapped to names."""
    labels = _object("label_names", value)
    names = {}
    for key, name in labels.items():
        number = key
        if isinstance(key, str):
            number = int(key) if key.isascii() and key.isdigit() and len(key) <= 6 else None
        if not isinstance(number, int) or isinstance(number, bool):
            _refuse("label_names", f"has key {_shown(key)}; keys are label values 0, 1, 2, ...")
        if not 0 <= number <= LIMITS.largest_label:
            _refuse(
                "label_names",
                f"has label value {number}; values run from 0 to {LIMITS.largest_label}",
            )
        if number in names:
            _refuse("label_names", f"names label value {number} twice")
        names[number] = _text(f"label_names.{key}", name, LIMITS.label_name_chars)
    return names


def _patch_size(value: Any) -> list[int]:
    size = [_whole("patch_size", n, 1, LIMITS.patch_edge) for n in _list("patch_size", value, 3)]
    if math.prod(size) > LIMITS.patch_voxels:
        _refuse("patch_size", f"{size} holds more than {LIMITS.patch_voxels} voxels")
    return size


def _spacing(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [_finite("spacing", s, *LIMITS.spacing_mm) for s in _list("spacing", value, 3)]


#: The anatomical axis each letter of an ITK orientation code names.
_AXIS_OF = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def _orientation(value: Any) -> str | None:
    if value is None:
        return None
    code = _text("orientation", value, 3).upper()
    if sorted(_AXIS_OF.get(c, -1) for c in code) != [0, 1, 2]:
        _refuse(
            "orientation",
            f"holds an unknown orientation {code!r}; a code names L or R, P or A, "
            "and S or I, once each (such as 'LPS')",
        )
    return code


#: Keys an intensity block may carry, beyond "kind" (see INTENSITY_KINDS).
_INTENSITY_KEYS = {"low", "high", "clip", "nonzero"}


def _intensity(value: Any) -> dict[str, Any]:
    block = _object("intensity", value)
    kind = block.get("kind")
    if kind not in INTENSITY_KINDS:
        known = ", ".join(INTENSITY_KINDS)
        _refuse("intensity.kind", f"must be one of {known}, not {_shown(kind)}")
    unknown = sorted(set(block) - _INTENSITY_KEYS - {"kind"})
    if unknown:
        _refuse("intensity", f"has unknown keys {unknown}")
    for flag in ("clip", "nonzero"):
        if not isinstance(block.get(flag, False), bool):
            _refuse(f"intensity.{flag}", f"must be true or false, not {_shown(block[flag])}")
    if kind == "window":
        low, high = (_finite(f"intensity.{k}", block.get(k)) for k in ("low", "high"))
    elif kind == "percentile":
        low, high = (
            _finite(f"intensity.{k}", block.get(k, default), 0.0, 100.0)
            for k, default in (("low", 0.5), ("high", 99.5))
        )
    else:
        return block
    if high <= low:
        _refuse("intensity", f"{kind} [{low:g}, {high:g}] is empty (high must exceed low)")
    return block


#: Architecture arguments are JSON numbers, text, true/false/null and lists of
#: them; no MONAI network argument (channels, features, heads, sizes) is a count
#: beyond a few thousand, nor nested deeper than a list of lists (DynUNet's
#: per-level kernel sizes). Text arguments (activation names) are name-sized.
_ARGUMENT_LIMIT = 65536
_ARGUMENT_DEPTH = 2


def _argument(name: str, value: Any, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if _is_number(value):
        _finite(name, value, -_ARGUMENT_LIMIT, _ARGUMENT_LIMIT)
    elif isinstance(value, str):
        _text(name, value, LIMITS.name_chars)
    elif isinstance(value, list) and depth < _ARGUMENT_DEPTH and len(value) <= _ARGUMENT_LIMIT:
        for item in value:
            _argument(name, item, depth + 1)
    else:
        _refuse(name, f"must be a number, text or a short list of them, not {_shown(value)}")


def _architecture_args(value: Any) -> dict[str, Any]:
    for key, argument in _object("architecture_args", value).items():
        _argument(f"architecture_args.{_text('architecture_args', key, 64)}", argument)
    return value


def _training(value: Any, task: str) -> dict[str, Any]:
    """The training record: free-form provenance, but the keys napari-medai reads are checked."""
    info = _object("training", value)
    if info.get("val_dice") is not None:
        _finite("training.val_dice", info["val_dice"], 0.0, 1.0)
    if "iterations" in info:
        _whole("training.iterations", info["iterations"], 0, 10**12)
    if "training_time_s" in info:
        _finite("training.training_time_s", info["training_time_s"], 0.0)
    for key in ("intensity_range", "pixel_spacing_mm"):
        if key in info:
            bounds = LIMITS.spacing_mm if key == "pixel_spacing_mm" else ()
            for number in _list(f"training.{key}", info[key], 2):
                _finite(f"training.{key}", number, *bounds)
    if "dimensionality" in info:
        _text("training.dimensionality", info["dimensionality"], 16)
    if "data" in info and task != GENERATION_TASK:
        _training_data(info["data"])
    _training_sources(info.get("sources"))
    return info


def _training_data(value: Any) -> None:
    """Per-pair counts (``label_voxels``, ``annotated_voxels``, ``painted_slices``)."""
    if not isinstance(value, list):
        _refuse("training.data", f"must be a list of training pairs, not {_shown(value)}")
    for pair in value:
        pair = _object("training.data", pair)
        for key in ("label_voxels", "painted_slices"):
            for count in _object(f"training.data.{key}", pair.get(key, {})).values():
                _whole(f"training.data.{key}", count, 0, 10**15)
        _whole("training.data.annotated_voxels", pair.get("annotated_voxels", 0), 0, 10**15)


def _training_sources(value: Any) -> None:
    """A classifier's boxes: their edges decide how it tiles slices (classification.slice_tiles).

    Sources that are not two numbers are ignored there (a slice model, an old
    card), so only a box edge that would be used is bounded.
    """
    for source in value if isinstance(value, list) else []:
        box = source.get("box") if isinstance(source, dict) else None
        if isinstance(box, list) and len(box) == 2 and all(map(_is_number, box)):
            for edge in box:
                _finite("training.sources.box", edge, -math.inf, LIMITS.box_edge)


def _format_version(value: Any) -> int:
    if _is_number(value) and value > CARD_FORMAT_VERSION:
        _refuse(
            "format_version",
            f"is {value:g}, newer than this napari-medai understands "
            f"({CARD_FORMAT_VERSION}); update napari-medai",
        )
    return _whole("format_version", value, 1, CARD_FORMAT_VERSION)


@dataclass
class ModelCard:
    """Description of a model package (all spatial lists in (z, y, x) order).

    ``spatial_dims`` is 2 for slice-wise models (run along z; ``in_channels``
    greater than 1 with ``context_slices`` makes a 2.5D model) and 3 for volume
    models. ``spacing`` of ``None`` runs at the scan's own spacing;
    ``orientation`` of ``None`` runs in the scan's own orientation, otherwise an
    ITK orientation code such as ``"LPS"`` or ``"RAS"``. ``modality`` is the
    DICOM modality the model was made for ("CT", "MR", ...; ``None``: any) and
    ``body_region`` where it looks ("abdomen", "head"; ``None``: anywhere); the
    Segment widget uses both to pick a model that fits the open scan and to
    warn before a model runs on the wrong kind of scan. Cards written before
    these fields existed load with both ``None``. Every field is checked on
    creation (see the module docstring).
    """

    name: str
    architecture: str
    architecture_args: dict[str, Any]
    label_names: dict[int, str]
    patch_size: list[int]
    task: str = "segmentation"
    spatial_dims: int = 3
    in_channels: int = 1
    context_slices: int = 0
    spacing: list[float] | None = None
    orientation: str | None = None
    intensity: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    training: dict[str, Any] = field(default_factory=dict)
    modality: str | None = None
    body_region: str | None = None
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.format_version = _format_version(self.format_version)
        self.name = _text("name", self.name, LIMITS.name_chars)
        self.architecture = _text("architecture", self.architecture, 64)
        if self.task not in TASKS:
            _refuse("task", f"must be one of {', '.join(TASKS)}, not {_shown(self.task)}")
        self.label_names = _label_names(self.label_names)
        self.patch_size = _patch_size(self.patch_size)
        self.spatial_dims = _whole("spatial_dims", self.spatial_dims, 2, 3)
        self.in_channels = _whole("in_channels", self.in_channels, 1, LIMITS.in_channels)
        self.context_slices = _whole(
            "context_slices", self.context_slices, 0, LIMITS.context_slices
        )
        self.spacing = _spacing(self.spacing)
        self.orientation = _orientation(self.orientation)
        self.intensity = _intensity(self.intensity)
        self.architecture_args = _architecture_args(self.architecture_args)
        self.training = _training(self.training, self.task)
        if self.modality is not None:
            modality = _text("modality", self.modality, LIMITS.modality_chars)
            self.modality = normalise_modality(modality) or None
        if self.body_region is not None:
            self.body_region = _text("body_region", self.body_region, LIMITS.body_region_chars)

    @property
    def num_classes(self) -> int:
        """Output channels: one per label value, background included."""
        return max(self.label_names, default=0) + 1

    def to_json(self) -> str:
        """The card as pretty JSON (label keys become strings)."""
        data = asdict(self)
        data["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse and check a card, naming ``source`` in any error."""
        try:
            data = json.loads(text)
        except RecursionError as error:
            raise ModelLoadError(f"{source}: not a model card (JSON nested too deeply)") from error
        except ValueError as error:  # JSONDecodeError, or an integer of thousands of digits
            raise ModelLoadError(f"{source}: not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise ModelLoadError(f"{source}: a model card is a JSON object, not {_shown(data)}")
        fields = cls.__dataclass_fields__
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelLoadError(f"{source}: unknown card fields {unknown}")
        missing = [name for name, spec in fields.items() if _required(spec) and name not in data]
        if missing:
            raise ModelLoadError(f"{source}: the card lacks the fields {missing}")
        try:
            return cls(**data)
        except ModelLoadError as error:
            raise ModelLoadError(f"{source}: {error}") from error

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Read and check a card from a JSON file (at most ``LIMITS.card_bytes``)."""
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(LIMITS.card_bytes + 1)
        except OSError as error:
            problem = error.strerror or "unreadable"
            raise ModelLoadError(f"{path}: cannot read the model card ({problem})") from error
        if len(raw) > LIMITS.card_bytes:
            raise ModelLoadError(f"{path}: larger than {LIMITS.card_bytes} bytes; not a model card")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ModelLoadError(f"{path}: not a model card (not UTF-8 text)") from error
        return cls.from_json(text, source=str(path))


def _required(spec: Any) -> bool:
    return spec.default is MISSING and spec.default_factory is MISSING


def package_file(folder: Path, name: str) -> Path:
    """``folder/name``, refused when it is a link leading out of the package folder.

    A package from elsewhere could otherwise make us read (and hash, and report
    on) any file on the machine.
    """
    path = Path(folder) / name
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(path))
    if root not in target.parents:
        raise ModelLoadError(f"{path}: refused; it is a link to a file outside the model folder")
    return path


def refuse_non_segmentation(card: ModelCard, action: str) -> None:
    """Refuse a model whose card task is not to segment, where a label map is needed."""
    if card.task in SEGMENTATION_TASKS:
        return
    does = "it makes synthetic images" if card.task == GENERATION_TASK else "it gives no label map"
    what = "an image generator" if card.task == GENERATION_TASK else f"a {card.task} model"
    raise ModelLoadError(
        f"'{card.name}' is {what} (card task '{card.task}'): {does} and cannot {action}; "
        "pick a segmentation model"
    )
