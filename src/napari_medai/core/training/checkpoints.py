"""Training state beside the last checkpoint, without pickle.

The last model is an ordinary model package (``last/``); the optimizer's
tensors go to ``optimizer.safetensors`` and everything else (iteration count,
history, optimizer hyper-parameters) to ``state.json``. Every file is written
atomically; ``state.json`` is written last and names the iteration the other
two belong to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.package import save_model_package

LAST = "last"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
STATE_VERSION = 1


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Optimizer tensors as ``"<param>.<key>"`` plus its (JSON-able) parameter groups."""
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{key}"] = tensor.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = tensor
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    folder: Path,
    card: ModelCard,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write the last model package, optimizer tensors and ``state`` under ``folder``."""
    folder = Path(folder)
    save_model_package(folder / LAST, card, network, overwrite=True)
    tensors, groups = _flatten_optimizer(optimizer.state_dict())
    atomic_write(
        folder / OPTIMIZER_FILE,
        lambda tmp: save_file(tensors, str(tmp), metadata={"iteration": str(state["iteration"])}),
        overwrite=True,
    )
    text = json.dumps({**state, "param_groups": groups, "version": STATE_VERSION}, indent=1)
    atomic_write(folder / STATE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"), True)
    return folder / LAST


def read_state(folder: Path) -> dict[str, Any]:
    """The saved training state; raises :class:`MedaiError` when there is none to resume."""
    path = Path(folder) / STATE_FILE
    if not path.is_file() or not (Path(folder) / LAST).is_dir():
        raise MedaiError(f"nothing to resume: {folder} holds no training checkpoint")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MedaiError(f"{path}: the training state cannot be read ({error})") from error
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise MedaiError(f"{path}: not a training state this napari-medai understands")
    return state


def load_optimizer_state(folder: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """The optimizer state saved with ``state``, or ``None`` if it belongs to another iteration."""
    path = Path(folder) / OPTIMIZER_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError):
        return None
    if metadata.get("iteration") != str(state["iteration"]):
        return None
    return _unflatten_optimizer(tensors, state["param_groups"])
