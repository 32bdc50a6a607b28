"""One entry point for every model source: :func:`load_model`.

A source is a registry name (``napari-medai models``), a model package folder,
a MONAI bundle (folder or .zip), a TorchScript archive or a PyTorch checkpoint.
Each becomes the same :class:`LoadedModel`; none can run code unless the user
trusts a bundle.
"""

from __future__ import annotations

from pathlib import Path

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.hashing import content_sha256
from napari_medai.core.models.bundle import load_bundle
from napari_medai.core.models.card import WEIGHTS_FILE, ModelCard
from napari_medai.core.models.deepbet import DEEPBET_NAME, load_deepbet
from napari_medai.core.models.formats import (
    WEIGHT_SUFFIXES,
    is_bundle_folder,
    is_bundle_zip,
    is_model_package,
)
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.package import load_model_package
from napari_medai.core.models.registry import find_model
from napari_medai.core.models.torchscript import load_weight_file

_KINDS = (
    "a model package folder (card.json + model.safetensors), a MONAI bundle "
    f"(folder or .zip), a TorchScript or PyTorch file ({', '.join(WEIGHT_SUFFIXES)}), "
    "or a name listed by 'napari-medai models'"
)


def load_model(
    source: str | Path, trusted: bool = False, card: ModelCard | None = None
) -> LoadedModel:
    """Load any model source on the CPU in eval mode.

    ``trusted`` allows MONAI bundles, whose configs run code. ``card``
    describes a TorchScript file or checkpoint that has no sidecar card.
    """
    path = Path(source).expanduser()
    if not path.exists():
        entry = find_model(str(source)) if isinstance(source, str) else None
        if entry is None:
            raise ModelLoadError(f"{source}: no such file or folder; a model is {_KINDS}")
        if entry.name == DEEPBET_NAME:
            return load_deepbet()
        path = entry.location
    if path.is_dir():
        return _load_folder(path, trusted)
    if is_bundle_zip(path):
        return load_bundle(path, trusted)
    if path.name.lower().endswith(WEIGHT_SUFFIXES):
        return load_weight_file(path, card)
    raise ModelLoadError(f"{path}: not a model file; a model is {_KINDS}")


def _load_folder(path: Path, trusted: bool) -> LoadedModel:
    if is_bundle_folder(path):
        return load_bundle(path, trusted)
    if is_model_package(path):
        card, network = load_model_package(path)
        return LoadedModel(
            card,
            network,
            str(path),
            content_sha256(path / WEIGHTS_FILE),
            extra={"format": "package"},
        )
    raise ModelLoadError(f"{path}: this folder holds no model; a model is {_KINDS}")
