"""The engine interface, the engines by name, and the job the CLI and a dock run.

An engine starts a :class:`PromptSession` on one scan (optionally from an existing mask);
each ``update`` takes the whole current prompt set and returns the object's mask on the
scan's grid, reusing what the session computed before. A learned engine (nnInteractive)
plugs in by adding a factory to :data:`ENGINES`: the dock and the CLI do not change. Its
session runs in a worker process, so it also gives its update as a job
(:class:`JobSession`): progress and Cancel cross over, and nothing waits in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from napari_medai.core.jobs import Job, Progress
from napari_medai.core.prompt.prompts import PromptError, Prompts
from napari_medai.core.volume import LabelMap, Volume


class PromptSession(Protocol):
    """One object being segmented on one scan."""

    def update(self, prompts: Prompts) -> np.ndarray:
        """The object's mask (bool, the scan's (z, y, x) shape) for the current prompts."""
        ...


@runtime_checkable
class JobSession(Protocol):
    """A session whose update is a job (it runs in a worker process: nnInteractive's)."""

    def update_job(self, prompts: Prompts) -> Job[np.ndarray]:
        """The object's mask for the current prompts, as a job."""
        ...


class PromptEngine(Protocol):
    """Something that starts sessions: the default geodesic engine, or a learned one."""

    name: str

    def start(self, volume: Volume, initial: np.ndarray | None = None) -> PromptSession:
        """A session on ``volume``; ``initial`` (bool, the scan's shape) is a mask to refine."""
        ...


def _geodesic(model_folder: Path | None) -> PromptEngine:
    if model_folder is not None:
        raise PromptError("the geodesic engine needs no model folder; it is for nninteractive")
    from napari_medai.core.prompt.geodesic import GeodesicEngine

    return GeodesicEngine()


def _nninteractive(model_folder: Path | None) -> PromptEngine:
    if model_folder is None:
        raise PromptError(
            "the nninteractive engine needs the folder of nnInteractive's weights "
            "(--model-folder; they are not shipped with napari-medai)"
        )
    from napari_medai.core.prompt.nninteractive_engine import NnInteractiveEngine

    return NnInteractiveEngine(model_folder)


#: Engines by name; the first is the default. Factories import their engine when asked and
#: take the model folder of a learned engine (None for one that needs no weights).
ENGINES: dict[str, Callable[[Path | None], PromptEngine]] = {
    "geodesic": _geodesic,
    "nninteractive": _nninteractive,
}
DEFAULT_ENGINE = "geodesic"


def engine_named(name: str = DEFAULT_ENGINE, model_folder: Path | None = None) -> PromptEngine:
    """The engine called ``name`` (a learned one on ``model_folder``), or a refusal saying why."""
    if name not in ENGINES:
        raise PromptError(f'no prompt engine "{name}"; the engines are: {", ".join(ENGINES)}')
    return ENGINES[name](model_folder)


def available_engines(model_folder: Path | None) -> list[str]:
    """The engines to offer: nnInteractive only when its package is installed and a folder given."""
    from napari_medai.core.prompt.nninteractive_engine import installed

    learned = ["nninteractive"] if model_folder is not None and installed() else []
    return [DEFAULT_ENGINE, *learned]


@dataclass(frozen=True)
class PromptResult:
    """An object's mask as label ``1`` on the scan's grid, and how long the update took."""

    mask: LabelMap
    seconds: float
    engine: str

    @property
    def voxels(self) -> int:
        """Voxels in the object."""
        return int(np.count_nonzero(self.mask.array))

    @property
    def ml(self) -> float:
        """The object's volume in millilitres."""
        return self.voxels * self.mask.geometry.voxel_volume_ml()

    def summary(self) -> dict[str, float | int | str]:
        """What the CLI prints: voxels, mL, seconds, engine."""
        return {
            "voxels": self.voxels,
            "ml": round(self.ml, 3),
            "seconds": round(self.seconds, 3),
            "engine": self.engine,
        }


def check_mask(volume: Volume, initial: np.ndarray | None) -> np.ndarray | None:
    """``initial`` as a bool mask on the scan's grid, or a refusal naming the shapes."""
    if initial is None:
        return None
    if initial.shape != volume.spatial_shape:
        raise PromptError(
            f"the starting mask has shape {initial.shape}, the scan {volume.spatial_shape} "
            "(z, y, x): draw it on this scan"
        )
    return initial != 0


def update_job(
    session: PromptSession, volume: Volume, prompts: Prompts, engine: str
) -> Job[PromptResult]:
    """One update as a job (a dock runs it in a thread through its JobRunner)."""
    prompts.check_inside(volume.spatial_shape)
    yield Progress(None, f"segmenting with {len(prompts.items)} prompts")
    began = time.perf_counter()
    if isinstance(session, JobSession):
        mask = yield from session.update_job(prompts)
    else:
        mask = session.update(prompts)
    seconds = time.perf_counter() - began
    label_map = LabelMap(mask.astype(np.uint8), volume.geometry, {}, {1: "object"})
    return PromptResult(label_map, seconds, engine)


def prompt_job(
    volume: Volume,
    prompts: Prompts,
    engine: str = DEFAULT_ENGINE,
    initial: np.ndarray | None = None,
    model_folder: Path | None = None,
) -> Job[PromptResult]:
    """Segment one object from ``prompts`` in one go (the CLI's job); seconds include start."""
    prompts.check_inside(volume.spatial_shape)
    began = time.perf_counter()
    session = engine_named(engine, model_folder).start(volume, check_mask(volume, initial))
    result = yield from update_job(session, volume, prompts, engine)
    return PromptResult(result.mask, time.perf_counter() - began, engine)
