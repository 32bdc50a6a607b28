"""Single-file models: TorchScript archives and plain PyTorch checkpoints.

Neither file says how to feed the network, so each needs a model card: the
``card`` argument (the widget lets the user confirm defaults), ``<file>.json``
or ``card.json`` beside the file. TorchScript is read with ``torch.jit.load``,
whose unpickler only knows tensors and TorchScript types; checkpoints with
``torch.load(weights_only=True)`` into the card's built-in architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.hashing import content_sha256
from napari_medai.core.models.card import CARD_FILE, ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.weights import (
    fit_state_dict,
    is_torchscript_archive,
    load_state_dict_file,
)


def sidecar_card_path(path: Path) -> Path | None:
    """``<file>.json`` beside ``path``, else ``card.json`` beside it, else None."""
    path = Path(path)
    for candidate in (path.with_name(path.name + ".json"), path.with_name(CARD_FILE)):
        if candidate.is_file():
            return candidate
    return None


def _card_for(path: Path, card: ModelCard | None) -> ModelCard:
    if card is not None:
        return card
    sidecar = sidecar_card_path(path)
    if sidecar is None:
        raise ModelLoadError(
            f"{path}: no model card says how to run this file; put {path.name}.json "
            f"or {CARD_FILE} beside it, or confirm the settings in the Segment widget"
        )
    return ModelCard.read(sidecar)


def load_torchscript(path: Path, card: ModelCard | None = None) -> LoadedModel:
    """Load a TorchScript archive on the CPU, described by its card."""
    path = Path(path)
    card = _card_for(path, card)
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "damaged"
        raise ModelLoadError(
            f"{path}: not a loadable TorchScript archive ({first_line})"
        ) from error
    return LoadedModel(
        card, network.eval(), str(path), content_sha256(path), extra={"format": "torchscript"}
    )


def load_checkpoint(path: Path, card: ModelCard | None = None) -> LoadedModel:
    """Load a state dict checkpoint into the card's architecture (weights only)."""
    path = Path(path)
    card = _card_for(path, card)
    state = load_state_dict_file(path)
    what = f"{card.architecture} as the card describes it"
    # Names and shapes are checked on the meta device first, so a card that asks for
    # a network far larger than the file allocates nothing before it is refused.
    with torch.device("meta"):
        fit_state_dict(build_network(card), state, path, what)
    network = build_network(card)
    fit_state_dict(network, state, path, what)
    return LoadedModel(
        card, network, str(path), content_sha256(path), extra={"format": "checkpoint"}
    )


def load_weight_file(path: Path, card: ModelCard | None = None) -> LoadedModel:
    """A TorchScript archive or a checkpoint, told apart by content, not name."""
    if is_torchscript_archive(path):
        return load_torchscript(path, card)
    return load_checkpoint(path, card)
