"""The worker's side of the nnInteractive engine: a weights-only load and one live session.

Runs in the engine's kept worker process (catalogue ``START_NNINTERACTIVE`` and
``UPDATE_NNINTERACTIVE``). The module keeps one nnInteractive inference session: its
network stays loaded between objects, its scan and prompts between updates. Each update
gets the whole prompt set (the engine interface) and adds only what is new; when prompts
were taken away it undoes nnInteractive's last interaction if that is enough, else it
resets and adds them all again, so the mask is always the one these prompts give.

nnInteractive loads its checkpoint with ``torch.load(weights_only=False)``, which would
run whatever a pickle in a folder from elsewhere asks. Here every ``torch.load`` during
the load is forced weights-only with torch's own switch (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``),
and only numpy's scalars (nnU-Net's training log holds them) are added to what it accepts.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_medai.core.devices import choose_device
from napari_medai.core.errors import ModelLoadError
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.prompt.nninteractive_engine import CHECKPOINT, check_model_folder
from napari_medai.core.prompt.prompts import Box, Point, Prompt, PromptError, Prompts, Scribble

#: torch's switch that makes every torch.load weights-only, whatever its caller passes.
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
#: numpy scalars, rebuilt from a dtype and bytes: data, never code.
NUMPY_SCALARS = [
    _multiarray.scalar,
    np.dtype,
    *(type(np.dtype(kind)) for kind in (np.float64, np.float32, np.int64, np.int32, np.bool_)),
]


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside loads weights only (and numpy scalars), whatever it asks."""
    before = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS):
            yield
    finally:
        if before is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = before


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what the pickle wanted to run."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "GLOBAL" in line]
    return (named or lines or ["not a weights file"])[0]


def load_session(folder: str, device_name: str = "auto") -> Any:
    """nnInteractive's inference session with the folder's network, on the device chosen.

    ``auto`` takes a CUDA GPU when there is one (then Apple's), else the CPU
    (:func:`~napari_medai.core.devices.choose_device`).
    """
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    model = check_model_folder(folder)
    session = nnInteractiveInferenceSession(
        device=choose_device(device_name),
        use_torch_compile=False,
        verbose=False,
        torch_n_threads=os.cpu_count() or 1,
    )
    try:
        with _weights_only_loads():
            session.initialize_from_trained_model_folder(
                str(model.path),
                use_fold=model.fold.removeprefix("fold_"),
                checkpoint_name=CHECKPOINT,
            )
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{model.checkpoint} holds more than weights ({_unpickling_reason(error)}); "
            "refused without running it"
        ) from None
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise ModelLoadError(
            f"{model.checkpoint} does not fit nnInteractive's network "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    return session


@dataclass
class _Live:
    """The worker's nnInteractive session, and the object it holds."""

    folder: str
    device_name: str
    session: Any
    key: str | None = None
    initial: np.ndarray | None = None
    #: The prompts added so far, in nnInteractive's interactions (one add call each).
    steps: list[tuple[Prompt, ...]] = field(default_factory=list)

    @property
    def applied(self) -> tuple[Prompt, ...]:
        """Every prompt added so far, in order."""
        return tuple(prompt for step in self.steps for prompt in step)


_live: _Live | None = None


def _loaded(folder: str, device_name: str) -> _Live:
    """The live session, loading the folder's network unless it is the one loaded."""
    global _live
    if _live is None or (_live.folder, _live.device_name) != (folder, device_name):
        _live = None  # the old network goes before the new one loads
        _live = _Live(folder, device_name, load_session(folder, device_name))
    return _live


def _restart(live: _Live) -> None:
    """Forget every prompt: back to the starting mask (or nothing)."""
    live.session.reset_interactions()
    if live.initial is not None:
        live.session.add_initial_seg_interaction(live.initial, run_prediction=False)
    live.steps = []


def start_object_job(
    folder: str, device_name: str, key: str, image: np.ndarray, initial: np.ndarray | None
) -> Job[str]:
    """Give nnInteractive the scan (and the mask to refine) for object ``key``; its device."""
    yield Progress(None, "loading nnInteractive's network")
    live = _loaded(folder, device_name)
    yield Progress(None, f"giving the scan to nnInteractive (on {live.session.device})")
    live.key = None
    live.session.set_image(image[None])
    live.session.set_target_buffer(np.zeros(image.shape, np.uint8))
    live.initial = None if initial is None else initial.astype(np.uint8)
    _restart(live)
    live.key = key
    return str(live.session.device)


def update_object_job(key: str, prompts: Prompts) -> Job[np.ndarray | None]:
    """Object ``key``'s mask for ``prompts``, or None if this worker does not hold it.

    Cancelled between two interactions, the session keeps those added: the next
    update goes on from them.
    """
    live = _live
    if live is None or live.key != key:
        return None
    steps = _steps(_catch_up(live, prompts.items))
    for number, step in enumerate(steps):
        yield Progress(
            number / len(steps), f"nnInteractive: interaction {number + 1} of {len(steps)}"
        )
        _add(live.session, step)
        live.steps.append(step)
    return live.session.target_buffer.astype(bool)


def _extends(items: tuple[Prompt, ...], applied: tuple[Prompt, ...]) -> bool:
    return items[: len(applied)] == applied


def _catch_up(live: _Live, items: tuple[Prompt, ...]) -> tuple[Prompt, ...]:
    """The prompts still to add, once what no longer holds is undone (or everything reset)."""
    if not _extends(items, live.applied) and live.steps and live.session.undo():
        live.steps.pop()
    if not _extends(items, live.applied):
        _restart(live)
    return items[len(live.applied) :]


def _steps(prompts: tuple[Prompt, ...]) -> list[tuple[Prompt, ...]]:
    """One interaction per point and box; consecutive strokes of one polarity make one.

    A lasso reaches the engine as a stroke per row of its inside: one interaction,
    not one prediction per row.
    """
    steps: list[tuple[Prompt, ...]] = []
    for prompt in prompts:
        last = steps[-1][-1] if steps else None
        if (
            isinstance(prompt, Scribble)
            and isinstance(last, Scribble)
            and last.positive == prompt.positive
        ):
            steps[-1] = (*steps[-1], prompt)
        else:
            steps.append((prompt,))
    return steps


def _add(session: Any, step: tuple[Prompt, ...]) -> None:
    """Add one interaction to nnInteractive's session (it predicts the object again)."""
    first = step[0]
    try:
        if isinstance(first, Point):
            session.add_point_interaction(first.zyx, include_interaction=first.positive)
        elif isinstance(first, Box):
            session.add_bbox_interaction(_bbox(session, first), include_interaction=True)
        else:
            crop, bbox = _stroke_crop(session, step)
            session.add_scribble_interaction(
                crop, include_interaction=first.positive, interaction_bbox=bbox
            )
    except ValueError as error:
        raise PromptError(f"nnInteractive cannot take this prompt: {error}") from None


def _bbox(session: Any, box: Box) -> list[list[int]]:
    """The box as nnInteractive's half-open [[z0, z1], [y0, y1], [x0, x1]].

    A 3D box goes to a model that takes 2D boxes only (nnInteractive's released one)
    as the box on its middle slice.
    """
    low, high = box.low.copy(), box.high.copy()
    if not box.is_2d and not session.supported_interactions.get("bbox3d", False):
        low[0] = high[0] = (low[0] + high[0]) // 2
    return [[int(a), int(b) + 1] for a, b in zip(low, high)]


def _stroke_crop(session: Any, step: tuple[Scribble, ...]) -> tuple[np.ndarray, list[list[int]]]:
    """The strokes drawn with nnInteractive's preferred brush, cropped to where they are.

    The brush is as wide in-plane as the model's ``preferred_scribble_thickness``
    and one slice deep, as a stroke is drawn on a slice.
    """
    shape = np.asarray(session.original_image_shape[1:])
    thickness = [1, *(int(t) for t in session.preferred_scribble_thickness[1:])]
    voxels = np.concatenate([stroke.voxels() for stroke in step])
    margin = np.asarray(thickness) // 2 + 1
    low = np.maximum(voxels.min(axis=0) - margin, 0)
    high = np.minimum(voxels.max(axis=0) + margin + 1, shape)
    crop = np.zeros(high - low, dtype=bool)
    crop[tuple((voxels - low).T)] = True
    crop = ndimage.binary_dilation(crop, structure=np.ones(thickness, dtype=bool))
    return crop.astype(np.uint8), [[int(a), int(b)] for a, b in zip(low, high)]
