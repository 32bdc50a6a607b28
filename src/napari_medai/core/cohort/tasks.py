"""What a cohort run does to one scan: the task, and the worker that runs it safely.

A task is built once per worker (it loads the model then, and refuses a model
whose card names another task before any scan runs) and turns one scan into
output files. Adding a task (``classify``) means one class with the same
three members and one entry in :data:`TASKS` (as ``classify`` did). :class:`CohortWorker` wraps a
task so a bad scan becomes a ``failed`` row with a one-line reason instead of
an exception, and times every scan; the local engine drives it in this process,
the Ray engine inside actors.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from napari_medai.core.cohort.manifest import ScanItem
from napari_medai.core.errors import MedaiError, ModelLoadError
from napari_medai.core.hashing import content_sha256
from napari_medai.core.jobs import Job, Progress, run_job, scaled
from napari_medai.core.models.fit import modality_mismatch, volume_modality

if TYPE_CHECKING:
    from napari_medai.core.models.loaded import LoadedModel
    from napari_medai.core.volume import Volume

#: Longest error reason kept in the record (one line).
MAX_REASON = 300


@dataclass(frozen=True)
class TaskSpec:
    """Which task, which model and how; plain values so it travels to Ray workers."""

    task: str
    model: str
    device: str = "auto"
    tta: bool = False
    trusted: bool = False

    def key(self) -> str:
        """What makes outputs comparable: a changed key redoes finished scans."""
        return json.dumps(asdict(self), sort_keys=True)


class Task(Protocol):
    """One kind of cohort work; ``__init__(spec)`` loads the model once."""

    @staticmethod
    def outputs(item: ScanItem) -> list[str]:
        """Output file names (in the output folder) for ``item``; the first is hashed."""

    def run(self, item: ScanItem, out: Path, model_lock: threading.Lock) -> Job[dict[str, Any]]:
        """Process ``item`` into ``out`` (atomic writes); return extra facts for the record."""


class SegmentTask:
    """Segment a scan; write ``<id>_seg.nii.gz`` on the scan's grid and its JSON sidecar."""

    def __init__(self, spec: TaskSpec) -> None:
        # Tasks import their models' machinery (torch, MONAI) when built, so the CLI and the
        # Cohort dock start without it.
        from napari_medai.core.models.sources import load_model
        from napari_medai.core.segmentation.inference import SegmentConfig

        self.spec = spec
        self.model = load_model(spec.model, trusted=spec.trusted)
        require_card_task(self.model, "segmentation", spec.task)
        self.config = SegmentConfig(device=spec.device, tta=spec.tta)

    @staticmethod
    def outputs(item: ScanItem) -> list[str]:
        return [f"{item.id}_seg.nii.gz", f"{item.id}_seg.json"]

    def run(self, item: ScanItem, out: Path, model_lock: threading.Lock) -> Job[dict[str, Any]]:
        from napari_medai.core.io.writing import label_sidecar, write_label_map, write_sidecar
        from napari_medai.core.segmentation.inference import segment_job

        labels_name, sidecar_name = self.outputs(item)
        volume, result, seconds = yield from read_then_model(
            item, model_lock, lambda v: segment_job(v, self.model, self.config), 0.2
        )
        mark = time.perf_counter()
        write_label_map(result.labels, out / labels_name, overwrite=True)
        sidecar = label_sidecar(
            result.labels,
            input_name=Path(item.path).name,
            outputs={"labels": labels_name},
            provenance=result.provenance,
            model={
                "name": self.model.card.name,
                "source": self.model.source,
                "sha256": self.model.sha256,
                "format": self.model.extra.get("format"),
            },
            settings=asdict(self.config),
        )
        sidecar["input_id"] = item.id
        write_sidecar(sidecar, out / sidecar_name, overwrite=True)
        seconds["write"] = time.perf_counter() - mark
        yield Progress(1.0, "written")
        note = modality_note(self.model, volume)
        return {"seconds": seconds, "model_sha256": self.model.sha256, **note}


class ClassifyTask:
    """Classify a whole scan; write ``<id>_class.json`` (class, probabilities, model, settings).

    The JSON names the scan only by its cohort id: no file name, no header fields.
    """

    def __init__(self, spec: TaskSpec) -> None:
        from napari_medai.core.classification.config import ClassifyConfig
        from napari_medai.core.models.sources import load_model

        if spec.tta:
            raise MedaiError("--tta (flipped copies) is for segmentation; drop it to classify")
        self.spec = spec
        self.model = load_model(spec.model, trusted=spec.trusted)
        require_card_task(self.model, "classification", spec.task)
        self.config = ClassifyConfig(scope="volume", device=spec.device)
        self.config.check()

    @staticmethod
    def outputs(item: ScanItem) -> list[str]:
        return [f"{item.id}_class.json"]

    def run(self, item: ScanItem, out: Path, model_lock: threading.Lock) -> Job[dict[str, Any]]:
        from napari_medai.core.classification.inference import classify_job
        from napari_medai.core.files import atomic_write

        volume, result, seconds = yield from read_then_model(
            item, model_lock, lambda v: classify_job(v, self.model, self.config), 0.3
        )
        mark = time.perf_counter()
        prediction = result.predictions[0]
        report = {
            "input_id": item.id,
            "class": prediction.name,
            "label": prediction.label,
            "probability": round(prediction.probability, 6),
            "probabilities": {
                result.class_names.get(label, str(label)): round(p, 6)
                for label, p in enumerate(prediction.probabilities)
            },
            "model": {
                "name": self.model.card.name,
                "source": self.model.source,
                "sha256": self.model.sha256,
                "format": self.model.extra.get("format"),
            },
            "settings": asdict(self.config),
            # Model and settings are given above; keep the rest (device, timings, model space).
            "provenance": {
                key: value
                for key, value in result.provenance.items()
                if key not in ("model", "source", "sha256", "config")
            },
        }
        text = json.dumps(report, indent=2, default=str)
        atomic_write(
            out / self.outputs(item)[0],
            lambda tmp: tmp.write_text(text, encoding="utf-8"),
            overwrite=True,
        )
        seconds["write"] = time.perf_counter() - mark
        yield Progress(1.0, "written")
        note = modality_note(self.model, volume)
        return {"seconds": seconds, "model_sha256": self.model.sha256, **note}


#: Task name -> class.
TASKS: dict[str, type] = {"segment": SegmentTask, "classify": ClassifyTask}


def read_then_model(
    item: ScanItem, model_lock: threading.Lock, model_job: Any, read_share: float
) -> Job[tuple[Volume, Any, dict[str, float]]]:
    """Read ``item``'s scan, then run ``model_job(volume)`` holding the model's lock.

    One scan at a time in the model; reading and writing of others overlap with
    it. Returns the volume, the model's result and the seconds of each part.
    """
    from napari_medai.core.io.reading import read_volume_job

    mark = time.perf_counter()
    volume = yield from scaled(read_volume_job(item.path), 0.0, read_share)
    seconds = {"read": time.perf_counter() - mark}
    with model_lock:
        mark = time.perf_counter()
        result = yield from scaled(model_job(volume), read_share, 0.95)
        seconds["model"] = time.perf_counter() - mark
    return volume, result, seconds


def task_class(name: str) -> type:
    """The task class called ``name``; a MedaiError naming the known tasks otherwise."""
    if name not in TASKS:
        raise MedaiError(f"unknown cohort task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


def require_card_task(model: LoadedModel, wanted: str, task: str) -> None:
    """Refuse a model whose card names another task than ``wanted``, before any scan runs."""
    card = model.card
    if card.task != wanted:
        raise ModelLoadError(
            f"the model '{card.name}' is a {card.task} model (its card's task), but a cohort "
            f"'{task}' run needs a {wanted} model; pick one whose card says task: {wanted}"
        )


def modality_note(model: LoadedModel, volume: Volume) -> dict[str, str]:
    """``{"warning": ...}`` when ``model`` is made for another modality than ``volume``, else {}.

    The same words the Segment dock shows before a run (:func:`modality_mismatch`); a
    file that states no modality is judged by its values (:func:`volume_modality`).
    """
    warning = modality_mismatch(model.card, model.card.name, volume_modality(volume))
    return {"warning": warning} if warning else {}


def one_line(error: BaseException) -> str:
    """A one-line reason: the message of a MedaiError, else the type and message."""
    text = str(error) if isinstance(error, MedaiError) else f"{type(error).__name__}: {error}"
    line = " ".join(text.split())
    return line[:MAX_REASON] if line else type(error).__name__


def failed_row(item: ScanItem, spec: TaskSpec, reason: str, seconds: float = 0.0) -> dict:
    """The record row of a scan that could not be processed."""
    return {
        "id": item.id,
        "input": item.path,
        "fingerprint": item.fingerprint,
        "task": spec.key(),
        "status": "failed",
        "error": reason,
        "outputs": [],
        "seconds": {"total": round(seconds, 3)},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "worker": os.getpid(),
    }


class CohortWorker:
    """A task plus error capture and timing; one per process (or Ray actor)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.task: Task = task_class(spec.task)(spec)
        self.model_lock = threading.Lock()

    def process_job(self, item: ScanItem, out: Path) -> Job[dict[str, Any]]:
        """Process one scan; returns its record row (``failed`` with a reason on error)."""
        started = time.perf_counter()
        try:
            facts = yield from self.task.run(item, Path(out), self.model_lock)
            input_hash = content_sha256(Path(item.path))
            names = self.task.outputs(item)
            output_hash = content_sha256(Path(out) / names[0])
        except Exception as error:  # a bad scan is recorded, never stops the run
            return failed_row(item, self.spec, one_line(error), time.perf_counter() - started)
        seconds = {key: round(value, 3) for key, value in facts.pop("seconds", {}).items()}
        seconds["total"] = round(time.perf_counter() - started, 3)
        return {
            "id": item.id,
            "input": item.path,
            "fingerprint": item.fingerprint,
            "task": self.spec.key(),
            "status": "done",
            "error": "",
            "input_sha256": input_hash,
            "outputs": names,
            "output_sha256": output_hash,
            "seconds": seconds,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "worker": os.getpid(),
            **facts,
        }

    def process(self, item: ScanItem, out: str) -> dict[str, Any]:
        """Blocking :meth:`process_job` (what a Ray actor calls)."""
        return run_job(self.process_job(item, Path(out)))
