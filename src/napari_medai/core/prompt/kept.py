"""A weight-free engine's sessions in a worker process kept for napari, so the GUI never waits.

In a thread of napari's process the geodesic engine stalled the GUI for 160-260 ms
per update on a quiet machine: SimpleITK's FastMarching holds the GIL for 45-65 ms a
call, and each time the GUI thread lets the GIL go inside Qt, the engine's next call
takes it. In a process of its own (:class:`~napari_medai.core.job_process.KeptWorker`)
it shares nothing with the GUI; the session, with what it computed, stays in the
worker between updates, and the scan goes over once per object.

The napari side (:class:`KeptEngine`, :class:`KeptSession`) imports nothing heavy; the
worker side is :func:`start_session_job` and :func:`update_session_job`, run through
:data:`~napari_medai.core.catalogue.START_KEPT_PROMPT` and ``UPDATE_KEPT_PROMPT``.
"""

from __future__ import annotations

import uuid

import numpy as np

from napari_medai.core import catalogue
from napari_medai.core.job_process import KeptWorker
from napari_medai.core.jobs import Job, Progress, run_job
from napari_medai.core.prompt.engine import PromptSession, engine_named
from napari_medai.core.prompt.prompts import Prompts
from napari_medai.core.volume import Volume

#: The worker's one live session: (its object's key, the session).
_held: tuple[str, PromptSession] | None = None


class KeptEngine:
    """Starts sessions of the engine ``name`` in one worker process kept for all of them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.worker = KeptWorker()

    def start(self, volume: Volume, initial: np.ndarray | None = None) -> KeptSession:
        """A session on ``volume``; nothing runs until its first update (in the worker)."""
        return KeptSession(self, volume, initial)

    def close(self) -> None:
        """Stop the worker process."""
        self.worker.close()


class KeptSession:
    """One object on one scan; the engine's session for it lives in the worker."""

    def __init__(self, engine: KeptEngine, volume: Volume, initial: np.ndarray | None) -> None:
        self.engine = engine
        self.volume = volume
        self.initial = initial
        self.key = uuid.uuid4().hex

    def update_job(self, prompts: Prompts) -> Job[np.ndarray]:
        """The object's mask for ``prompts``; the scan goes over when the worker lacks it.

        The worker answers None for the first update, after another object took its
        place, or after it was restarted.
        """
        worker = self.engine.worker
        mask = yield from catalogue.UPDATE_KEPT_PROMPT.on(worker, self.key, prompts)
        if mask is None:
            yield from catalogue.START_KEPT_PROMPT.on(
                worker, self.engine.name, self.key, self.volume, self.initial
            )
            mask = yield from catalogue.UPDATE_KEPT_PROMPT.on(worker, self.key, prompts)
        return mask

    def update(self, prompts: Prompts) -> np.ndarray:
        """The object's mask for ``prompts`` (waits for the worker)."""
        return run_job(self.update_job(prompts))


def start_session_job(
    engine: str, key: str, volume: Volume, initial: np.ndarray | None
) -> Job[None]:
    """In the worker: start ``engine``'s session on ``volume`` for object ``key``."""
    global _held
    yield Progress(None, "preparing the scan for prompting")
    _held = None  # the last object's session goes before this one is built
    _held = (key, engine_named(engine).start(volume, initial))


def update_session_job(key: str, prompts: Prompts) -> Job[np.ndarray | None]:
    """In the worker: object ``key``'s mask for ``prompts``, or None if not held here."""
    if _held is None or _held[0] != key:
        return None
    yield Progress(None, f"segmenting with {len(prompts.items)} prompts")
    return _held[1].update(prompts)
