"""MONAI bundles (a folder or a .zip) as model sources.

A bundle's configs are code: ``_target_`` instantiates any class, ``$`` strings
are evaluated as Python and ``@`` references tie them together. A bundle is
therefore only loaded when the caller marks it trusted; then MONAI's own
``ConfigParser`` builds the network and the pre-processing, and the card is read
off the instantiated transforms (orientation, spacing, intensity) and the
inferer (patch size). Weights are read with ``weights_only=True`` (``model.pt``)
or ``torch.jit.load`` (``model.ts``).
"""

from __future__ import annotations

import json
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    Orientation,
    ScaleIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
)

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.hashing import content_sha256
from napari_medai.core.models.axes import ReversedAxes, itk_orientation_from_axcodes
from napari_medai.core.models.card import LIMITS, ModelCard
from napari_medai.core.models.formats import METADATA_FILE
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.weights import fit_state_dict, load_state_dict_file

INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
UNTRUSTED_REASON = (
    "MONAI bundle configs can run arbitrary Python; "
    "mark the bundle trusted only if you trust its author"
)


def check_zip_members(path: Path) -> None:
    """Refuse a zip with absolute paths, ``..`` components or symbolic links.

    Checked for every member before anything is extracted.
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            posix = PurePosixPath(name.replace("\\", "/"))
            if posix.is_absolute() or PureWindowsPath(name).drive or name.startswith("\\"):
                problem = "an absolute path"
            elif ".." in posix.parts:
                problem = "a '..' path leading out of the bundle"
            elif stat.S_ISLNK(info.external_attr >> 16):
                problem = "a symbolic link"
            else:
                continue
            raise ModelLoadError(f"{path}: refused; the zip holds {problem} ({name!r})")


def load_bundle(path: Path, trusted: bool = False) -> LoadedModel:
    """Load a bundle folder or zip; refuse unless ``trusted`` (see module docstring)."""
    path = Path(path)
    if path.is_dir():
        if not trusted:
            raise ModelLoadError(f"{path}: not loaded; {UNTRUSTED_REASON}")
        return _load_bundle_folder(path, str(path))
    check_zip_members(path)
    if not trusted:
        raise ModelLoadError(f"{path}: not loaded; {UNTRUSTED_REASON}")
    with tempfile.TemporaryDirectory(prefix="napari-medai-bundle-") as tmp:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        roots = [p.parents[1] for p in Path(tmp).glob("*/" + METADATA_FILE)]
        roots += [p.parents[1] for p in Path(tmp).glob(METADATA_FILE)]
        if len(roots) != 1:
            raise ModelLoadError(
                f"{path}: expected exactly one bundle in the zip, found {len(roots)}"
            )
        return _load_bundle_folder(roots[0], str(path))


def _parsed(parser: ConfigParser, key: str, config: Path) -> Any:
    # The config is code the user trusted: any exception it raises is reported as a load error.
    try:
        return parser.get_parsed_content(key)
    except Exception as error:
        raise ModelLoadError(f"{config}: cannot build {key!r} ({error})") from error


def _load_bundle_folder(root: Path, source: str) -> LoadedModel:
    metadata_path = root / METADATA_FILE
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ModelLoadError(f"{metadata_path}: not a readable JSON file ({error})") from error
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{metadata_path}: bundle metadata must be a JSON object")
    config = next((root / c for c in INFERENCE_CONFIGS if (root / c).is_file()), None)
    if config is None:
        raise ModelLoadError(f"{root}: the bundle has no configs/inference.json or .yaml")
    parser = ConfigParser()
    try:
        parser.read_meta(metadata_path)
        parser.read_config(config)
    except Exception as error:
        raise ModelLoadError(f"{config}: not a readable bundle config ({error})") from error
    parser["bundle_root"] = str(root)
    network, weights = _network(parser, root, config)
    card = _card(parser, metadata, root, config, network)
    return LoadedModel(
        card,
        ReversedAxes(network).eval(),
        source,
        content_sha256(weights),
        extra={"format": "bundle", "bundle_version": metadata.get("version")},
    )


def _network(parser: ConfigParser, root: Path, config: Path) -> tuple[torch.nn.Module, Path]:
    state_file, script_file = root / "models" / "model.pt", root / "models" / "model.ts"
    if parser.get("network_def") is not None and state_file.is_file():
        network = _parsed(parser, "network_def", config)
        if not isinstance(network, torch.nn.Module):
            raise ModelLoadError(f"{config}: network_def does not build a PyTorch network")
        state = load_state_dict_file(state_file)
        return fit_state_dict(network, state, state_file, type(network).__name__), state_file
    if script_file.is_file():
        try:
            return torch.jit.load(str(script_file), map_location="cpu").eval(), script_file
        except RuntimeError as error:
            raise ModelLoadError(f"{script_file}: not a loadable TorchScript archive") from error
    raise ModelLoadError(
        f"{root}: the bundle has neither models/model.pt with a network_def nor models/model.ts"
    )


def _card(
    parser: ConfigParser,
    metadata: dict[str, Any],
    root: Path,
    config: Path,
    network: torch.nn.Module,
) -> ModelCard:
    transforms = _preprocessing(parser, config)
    orientation = next((t.axcodes for t in transforms if isinstance(t, Orientation)), None)
    pixdim = next((t.pixdim for t in transforms if isinstance(t, Spacing)), None)
    if pixdim is not None and (len(pixdim) != 3 or min(pixdim) <= 0):
        raise ModelLoadError(f"{config}: Spacingd pixdim {list(pixdim)} is not three positive mm")
    intensities = [i for i in (_intensity(t, config) for t in transforms) if i is not None]
    if len(intensities) > 1:
        raise ModelLoadError(f"{config}: several intensity normalisations; cannot reproduce them")
    fmt = _section(metadata, "network_data_format", root)
    image = _section(_section(fmt, "inputs", root), "image", root)
    pred = _section(_section(fmt, "outputs", root), "pred", root)
    try:
        return ModelCard(
            name=str(metadata.get("name") or root.name)[: LIMITS.name_chars],
            architecture=type(network).__name__,
            architecture_args={},
            label_names=_label_names(pred, config),
            patch_size=_patch_size(parser, image, config)[::-1],
            in_channels=image.get("num_channels", 1),
            spacing=None if pixdim is None else [float(s) for s in pixdim][::-1],
            orientation=None
            if orientation is None
            else itk_orientation_from_axcodes(orientation, str(config)),
            intensity=intensities[0] if intensities else {"kind": "none"},
            training={"source": "MONAI bundle", "version": metadata.get("version")},
        )
    except ModelLoadError as error:
        raise ModelLoadError(f"{root / METADATA_FILE}: {error}") from error


def _section(parent: dict[str, Any], key: str, root: Path) -> dict[str, Any]:
    """``parent[key]`` when it is a JSON object (empty when absent), else refused."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ModelLoadError(f"{root / METADATA_FILE}: '{key}' must be a JSON object")
    return value


def _preprocessing(parser: ConfigParser, config: Path) -> list[Any]:
    """The bundle's pre-processing transforms, dictionary wrappers unwrapped."""
    if parser.get("preprocessing") is None:
        return []
    compose = _parsed(parser, "preprocessing", config)
    transforms = compose.flatten().transforms if isinstance(compose, Compose) else [compose]
    inner = ("ornt_transform", "spacing_transform", "scaler", "normalizer")
    return [next((getattr(t, a) for a in inner if hasattr(t, a)), t) for t in transforms]


def _intensity(transform: Any, config: Path) -> dict[str, Any] | None:
    """Our card's intensity normalisation for one MONAI transform (None if not one)."""
    if isinstance(transform, ScaleIntensityRangePercentiles):
        _check_unit_range(transform.b_min, transform.b_max, config)
        if transform.relative or transform.channel_wise:
            raise ModelLoadError(
                f"{config}: relative or channel-wise percentile scaling is not supported"
            )
        return {
            "kind": "percentile",
            "low": float(transform.lower),
            "high": float(transform.upper),
            "clip": bool(transform.clip),
        }
    if isinstance(transform, ScaleIntensityRange):
        _check_unit_range(transform.b_min, transform.b_max, config)
        if not transform.clip:
            raise ModelLoadError(f"{config}: ScaleIntensityRanged without clip is not supported")
        return {"kind": "window", "low": float(transform.a_min), "high": float(transform.a_max)}
    if isinstance(transform, NormalizeIntensity):
        return {"kind": "zscore", "nonzero": bool(transform.nonzero)}
    if isinstance(transform, ScaleIntensity):
        raise ModelLoadError(f"{config}: min-max ScaleIntensityd is not supported")
    return None


def _check_unit_range(low: Any, high: Any, config: Path) -> None:
    if (low, high) != (0, 1):
        raise ModelLoadError(
            f"{config}: intensity is scaled to [{low}, {high}]; napari-medai reproduces [0, 1] only"
        )


def _patch_size(parser: ConfigParser, image: dict[str, Any], config: Path) -> list[int]:
    """The sliding-window ``roi_size`` of the inferer, else the input's spatial shape."""
    roi = None
    if parser.get("inferer") is not None:
        roi = getattr(_parsed(parser, "inferer", config), "roi_size", None)
    roi = roi if roi is not None else image.get("spatial_shape")
    try:
        size = [int(r) for r in roi]
    except (TypeError, ValueError):
        size = []
    if len(size) != 3 or min(size) <= 0 or size != list(roi):
        raise ModelLoadError(
            f"{config}: no 3D patch size (inferer roi_size or metadata spatial_shape); "
            "only 3D bundles with a fixed patch size are supported"
        )
    return size


def _label_names(pred: dict[str, Any], config: Path) -> dict[Any, Any]:
    """Label names from the output ``channel_def``, else numbered from ``num_channels``.

    The card checks the values and names; ``num_channels`` is bounded here first,
    since it sets how many names are made.
    """
    if pred.get("channel_def"):
        return pred["channel_def"]
    count = pred.get("num_channels")
    if count:
        if not isinstance(count, int) or not 1 < count <= LIMITS.largest_label + 1:
            raise ModelLoadError(
                f"{config.parent / 'metadata.json'}: outputs.pred.num_channels must be a whole "
                f"number from 2 to {LIMITS.largest_label + 1}, not {count!r:.40}"
            )
        return {0: "background"} | {k: f"label {k}" for k in range(1, count)}
    raise ModelLoadError(
        f"{config.parent / 'metadata.json'}: no output label names "
        "(network_data_format.outputs.pred.channel_def)"
    )
