"""The Ray engine: a pool of actors, each loading the model once and keeping it.

Ray does the scheduling and the fault tolerance: actors request a CPU and
``gpus_per_worker`` GPUs each, are restarted when their process dies, and Ray
re-runs the scan that was in flight on the restarted actor
(``max_restarts``/``max_task_retries``). Each actor takes two scans at a time
(``max_concurrency=2``) so reading and writing one overlaps with the model
running on the other; the model itself runs one scan at a time. The driver
only keeps every actor fed and hands finished rows back as they arrive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_medai.core.cohort.manifest import ScanItem
from napari_medai.core.cohort.tasks import CohortWorker, TaskSpec, failed_row
from napari_medai.core.errors import MedaiError

#: Scans in flight per actor: one in the model, one being read or written.
IN_FLIGHT = 2
#: Times Ray re-runs a scan whose worker died before the scan counts as failed.
TASK_RETRIES = 2


def require_ray() -> None:
    """Raise a MedaiError saying how to install Ray when it is missing."""
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise MedaiError(
            "the Ray engine needs Ray: pip install 'napari-medai[ray]' (or use --engine local)"
        ) from error


class RayWorker:
    """Actor body: builds the task (loads the model) once, then processes scans."""

    def __init__(self, spec: TaskSpec) -> None:
        self.error: str | None = None
        self.worker: CohortWorker | None = None
        try:
            self.worker = CohortWorker(spec)
        except MedaiError as error:
            self.error = str(error)

    def ready(self) -> str | None:
        """``None`` once the model is loaded, else why it could not be."""
        return self.error

    def pid(self) -> int:
        return os.getpid()

    def process(self, item: ScanItem, out: str) -> dict[str, Any]:
        if self.worker is None:
            raise MedaiError(self.error or "the worker has no model")
        return self.worker.process(item, out)


def ray_rows(
    todo: list[ScanItem],
    spec: TaskSpec,
    out: Path,
    engine: Any,
    heartbeat_s: float,
) -> Iterator[dict[str, Any] | None]:
    """Rows of ``todo`` as actors finish them; ``None`` every ``heartbeat_s`` while waiting."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if engine.address:
            ray.init(address=engine.address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=max(engine.workers, os.cpu_count() or 1),
                num_gpus=None,
                include_dashboard=False,
                log_to_driver=False,
            )
    actors: list[Any] = []
    try:
        remote = ray.remote(
            num_cpus=1,
            num_gpus=engine.gpus_per_worker,
            max_restarts=-1,
            max_task_retries=TASK_RETRIES,
            max_concurrency=IN_FLIGHT,
        )(RayWorker)
        actors = [remote.remote(spec) for _ in range(engine.workers)]
        problems = {p for p in ray.get([actor.ready.remote() for actor in actors]) if p}
        if problems:
            raise MedaiError(problems.pop())
        queue = list(reversed(todo))
        pending: dict[Any, tuple[int, ScanItem]] = {}
        load = [0] * len(actors)
        while queue or pending:
            while queue and min(load) < IN_FLIGHT:
                index = load.index(min(load))
                item = queue.pop()
                pending[actors[index].process.remote(item, str(out))] = (index, item)
                load[index] += 1
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=heartbeat_s)
            if not ready:
                yield None
                continue
            for ref in ready:
                index, item = pending.pop(ref)
                load[index] -= 1
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as error:
                    row = failed_row(item, spec, _reason(error))
                yield row
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _reason(error: Exception) -> str:
    import ray

    if isinstance(error, ray.exceptions.ActorDiedError | ray.exceptions.RayActorError):
        return f"the worker died {TASK_RETRIES + 1} times while processing this scan"
    return " ".join(str(error).split())[:300]
