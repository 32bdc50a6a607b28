"""Reading weight files without ever running code from them.

``torch.load`` is only ever called with ``weights_only=True``: PyTorch's
restricted unpickler then accepts tensors, containers and numbers and refuses
any other Python object, so a malicious pickle raises instead of running. There
is no fallback to full unpickling.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from napari_medai.core.errors import ModelLoadError

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "network", "net")


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip (it carries ``constants.pkl`` and code)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a PyTorch checkpoint as a state dict with the restricted unpickler only.

    A checkpoint that holds pickled Python objects (a whole module, an
    optimizer class, or a payload that would run code) is refused.
    """
    try:
        content = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ModelLoadError(
            f"{path}: refused to load; the file is not a plain weights checkpoint "
            "(it holds Python objects, which could run code, or it is damaged). "
            "Save a state dict (model.state_dict()) or a TorchScript export instead"
        ) from error
    return _find_state_dict(content, path)


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _find_state_dict(content: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping):
        for key in _NESTED_STATE_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key])
    raise ModelLoadError(
        f"{path}: no state dict found (expected parameter names mapped to tensors, "
        f"at the top level or under one of {', '.join(_NESTED_STATE_KEYS)})"
    )


def fit_state_dict(
    network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str
) -> torch.nn.Module:
    """Load ``state`` into ``network`` strictly; explain a mismatch in one line.

    Weights saved from ``DataParallel`` carry a ``module.`` prefix on every
    name; it is removed when the plain names would not match otherwise.
    """
    if all(key.startswith("module.") for key in state) and not any(
        key.startswith("module.") for key in network.state_dict()
    ):
        state = {key[len("module.") :]: value for key, value in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        expected = set(network.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        detail = (
            f"{len(missing)} missing and {len(unexpected)} unexpected parameter names"
            if missing or unexpected
            else "parameter shapes differ"
        )
        raise ModelLoadError(f"{path}: the weights do not fit {what} ({detail})") from error
    return network.eval()
