"""nnInteractive as a prompt engine, from a model folder the user has; torch stays out of here.

nnInteractive (Isensee et al. 2025; the ``nninteractive`` package, Apache-2.0) turns
points, boxes and scribbles into a 3D mask with a network whose weights are not ours to
ship: its released weights are CC BY-NC-SA 4.0 (non-commercial), downloaded by the user.
This module is the caller's side: it checks the model folder without torch, and a
session sends each update to a worker process kept by its engine
(:class:`~napari_medai.core.job_process.KeptWorker`), where nnInteractive's own session
holds the network, the scan and the prompts so far between updates
(:mod:`napari_medai.core.prompt.nninteractive_model` is that side).

A model folder from elsewhere must never run code: before anything loads it, its plans
may name only nnU-Net's network classes and torch's layers (nnU-Net imports whatever a
plans file names), and the worker loads the checkpoint weights-only.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from napari_medai.core import catalogue
from napari_medai.core.errors import ModelLoadError
from napari_medai.core.job_process import KeptWorker
from napari_medai.core.jobs import Job, run_job
from napari_medai.core.prompt.prompts import Prompts
from napari_medai.core.volume import Volume

NAME = "nninteractive"
#: The distribution that holds nnInteractive's inference session (not its torch-free client).
DISTRIBUTION = "nnInteractive"
CHECKPOINT = "checkpoint_final.pth"
#: What nnInteractive's README gives as its released weights' licence.
RELEASED_LICENSE = "CC BY-NC-SA 4.0"
#: The dataset nnInteractive's released plans are made for (its own test for its weights).
RELEASED_DATASET = "Dataset225_nnInteractiveV2"
#: Where a plans file may point nnU-Net's import-by-name: network classes, torch layers.
NETWORK_MODULES = "dynamic_network_architectures.architectures."
LAYER_MODULES = "torch.nn."
#: The capability file nnInteractive reads, then its older name.
INFO_FILES = ("inference_info.json", "inference_session_class.json")


def installed() -> bool:
    """Whether nnInteractive's package is installed (read from its metadata: imports nothing)."""
    try:
        metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class ModelFolder:
    """A checked nnInteractive model folder: its fold and the licence its weights are under."""

    path: Path
    fold: str
    license: str

    @property
    def checkpoint(self) -> Path:
        """The checkpoint nnInteractive loads."""
        return self.path / self.fold / CHECKPOINT


def _refuse(path: Path, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is not an nnInteractive model folder: {problem} "
        "(pick the folder holding plans.json and fold_0, e.g. nnInteractive_v1.0)"
    )


def _json(path: Path, folder: Path) -> dict:
    if not path.is_file():
        raise _refuse(folder, f"it has no {path.name}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse(folder, f"{path.name} is not JSON ({error})") from None
    if not isinstance(content, dict):
        raise _refuse(folder, f"{path.name} holds no JSON object")
    return content


def _check_imports(plans: dict, folder: Path) -> None:
    """Refuse a plans file naming code outside nnU-Net's networks and torch's layers."""
    for name, configuration in plans.get("configurations", {}).items():
        architecture = configuration.get("architecture") if isinstance(configuration, dict) else {}
        if not architecture:
            continue
        network = str(architecture.get("network_class_name"))
        named = [network] if not network.startswith(NETWORK_MODULES) else []
        for key in architecture.get("_kw_requires_import", []):
            layer = architecture.get("arch_kwargs", {}).get(key)
            if layer is not None and not str(layer).startswith(LAYER_MODULES):
                named.append(str(layer))
        if named:
            raise _refuse(
                folder,
                f"plans.json's configuration {name!r} names code outside nnU-Net's networks and "
                f"torch's layers ({', '.join(named)}); refused without importing it",
            )


def _license(folder: Path, plans: dict) -> str:
    """The LICENSE file's first line, as nnInteractive reads it, or what is known without one."""
    license_file = folder / "LICENSE"
    if license_file.is_file():
        for line in license_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip()
    if plans.get("dataset_name") == RELEASED_DATASET:
        return RELEASED_LICENSE
    return "not stated (the folder has no LICENSE file)"


def check_model_folder(folder: Path | str) -> ModelFolder:
    """``folder`` laid out as nnInteractive's released checkpoints are, or a one-line refusal.

    Holds ``plans.json``, ``dataset.json``, ``inference_info.json`` (or the older
    ``inference_session_class.json``) and one ``fold_*`` folder with the checkpoint.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"the nnInteractive model folder {path} does not exist")
    plans = _json(path / "plans.json", path)
    _json(path / "dataset.json", path)
    if not any((path / name).is_file() for name in INFO_FILES):
        raise _refuse(path, "it has no inference_info.json")
    folds = sorted(p.name for p in path.glob("fold_*") if p.is_dir())
    if len(folds) != 1:
        found = ", ".join(folds) or "none"
        raise _refuse(path, f"it must hold one fold_* folder (found {found})")
    if not (path / folds[0] / CHECKPOINT).is_file():
        raise _refuse(path, f"{folds[0]} has no {CHECKPOINT}")
    _check_imports(plans, path)
    return ModelFolder(path, folds[0], _license(path, plans))


class NnInteractiveEngine:
    """Starts nnInteractive sessions on one model folder, in a worker process of its own.

    The worker keeps the loaded network between objects, so only the first object
    pays for starting the process, importing torch and loading the weights.
    """

    name = NAME

    def __init__(self, model_folder: Path | str, device: str = "auto") -> None:
        if not installed():
            raise ModelLoadError(
                "nnInteractive is not installed: pip install 'napari-medai[nninteractive]'"
            )
        self.folder = check_model_folder(model_folder)
        self.device = device
        self.worker = KeptWorker()

    def start(self, volume: Volume, initial: np.ndarray | None = None) -> NnInteractiveSession:
        """A session on ``volume``; nothing runs until its first update (in the worker)."""
        return NnInteractiveSession(self, volume, initial)

    def close(self) -> None:
        """Stop the worker process (and free the network it holds)."""
        self.worker.close()


class NnInteractiveSession:
    """One object on one scan; its state lives in the engine's worker process."""

    def __init__(
        self, engine: NnInteractiveEngine, volume: Volume, initial: np.ndarray | None
    ) -> None:
        self.engine = engine
        self.volume = volume
        self.initial = initial
        self.key = uuid.uuid4().hex
        #: The device nnInteractive runs on, once the worker has started the session.
        self.device: str | None = None

    def update_job(self, prompts: Prompts) -> Job[np.ndarray]:
        """The object's mask for ``prompts``, as a job whose progress and cancel cross over.

        The worker answers None when it does not hold this object (the first update, a
        newer object took its place, or the worker restarted): the scan goes over then.
        """
        worker = self.engine.worker
        mask = yield from catalogue.UPDATE_NNINTERACTIVE.on(worker, self.key, prompts)
        if mask is None:
            folder = self.engine.folder
            self.device = yield from catalogue.START_NNINTERACTIVE.on(
                worker, str(folder.path), self.engine.device, self.key, self.volume.array,
                self.initial,
            )  # fmt: skip
            mask = yield from catalogue.UPDATE_NNINTERACTIVE.on(worker, self.key, prompts)
        return mask

    def update(self, prompts: Prompts) -> np.ndarray:
        """The object's mask for ``prompts`` (waits for the worker)."""
        return run_job(self.update_job(prompts))
