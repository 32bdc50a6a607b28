"""Save and load model packages: ``card.json`` plus ``model.safetensors``.

safetensors holds plain tensors only, so loading a package never runs code.
The network the card describes is first built without memory (PyTorch's
``meta`` device) and compared with the tensor shapes the file declares, so a
card asking for an absurd network is refused before anything is allocated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.files import atomic_directory
from napari_medai.core.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard, package_file
from napari_medai.core.models.networks import build_network


def save_model_package(
    path: Path, card: ModelCard, network: torch.nn.Module, overwrite: bool = False
) -> Path:
    """Write ``card`` and ``network``'s weights atomically as one folder."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_FILE))
    return Path(path)


def load_model_package(path: Path) -> tuple[ModelCard, torch.nn.Module]:
    """Read a package and return its card and network (eval mode, on the CPU)."""
    path = Path(path)
    card = ModelCard.read(package_file(path, CARD_FILE))
    weights = package_file(path, WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelLoadError(f"{path}: the package has no {WEIGHTS_FILE}")
    _check_shapes(card, weights)
    network = build_network(card)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({error})") from error
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise _misfit(card, weights) from error
    return card, network.eval()


def _stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the file's header declares it (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            names = handle.keys()  # safe_open is not iterable, so ruff's SIM118 does not apply
            return {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({error})") from error


def _check_shapes(card: ModelCard, weights: Path) -> None:
    """Refuse weights whose names or shapes differ from the card's network, allocating nothing."""
    stored = _stored_shapes(weights)
    try:
        with torch.device("meta"):
            network = build_network(card)
    except ModelLoadError as error:
        raise ModelLoadError(f"{weights.with_name(CARD_FILE)}: {error}") from error
    wanted = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    if wanted != stored:
        raise _misfit(card, weights)


def _misfit(card: ModelCard, weights: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{weights}: the weights do not fit {card.architecture} as the card describes it"
    )
