"""Save and load model packages: ``card.json`` plus ``model.safetensors``.

safetensors holds plain tensors only, so loading a package never runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.files import atomic_directory
from napari_medai.core.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard
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
    card = ModelCard.read(path / CARD_FILE)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{path}: the package has no {WEIGHTS_FILE}")
    network = build_network(card)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({error})") from error
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ModelLoadError(
            f"{weights}: the weights do not fit {card.architecture} as the card describes it"
        ) from error
    return card, network.eval()
