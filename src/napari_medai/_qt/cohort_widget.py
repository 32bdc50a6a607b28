"""Dock widget "Cohort": segment a whole folder (or manifest) of scans in the background.

Hands the folder of the current scan, or any folder, CSV manifest or glob, to
a cohort run through the catalogue's ``RUN_COHORT`` job: listing the scans,
loading the model and segmenting run in the worker process, never in
napari's. The model picker is the Segment dock's (the same titles, only
segmentation models). A scan of another modality than the model's is
segmented all the same and named in the run's warnings. The masks stay on
disk in the output folder with the run record; nothing is added to the layer
list. Running again resumes: finished scans are skipped.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_medai._napari.modality import layer_modality
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.model_picker import ModelPicker
from napari_medai._qt.parts import narrow, scroll_column, wrapping
from napari_medai.core import catalogue
from napari_medai.core.cohort.run import EngineConfig
from napari_medai.core.cohort.tasks import TaskSpec

if TYPE_CHECKING:
    import napari

    from napari_medai.core.cohort.run import CohortSummary

ENGINES = ("local", "ray")
#: Rows of failed or warned scans the summary names (the record holds them all).
SHOWN_ROWS = 5
IDLE_MESSAGE = "Results are written to the output folder, not to layers."


def layer_folder(layer: object) -> Path | None:
    """The folder of the file an image layer was opened from (``None`` if not from a file)."""
    source = getattr(getattr(layer, "source", None), "path", None)
    if not source:
        return None
    path = Path(source)
    return path if path.is_dir() else path.parent


class CohortWidget(Container):
    """Cohort (folder, CSV or glob), model, output folder, engine; Run; progress and summary."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.cohort = FileEdit(mode="d", label="Cohort", tooltip="folder of scans, CSV or glob")
        self.use_current = PushButton(text="Use the current scan's folder")
        # The cohort task "segment" runs models whose card says segmentation; it has no
        # "trust" choice, so MONAI bundles (whose configs run code) are not offered.
        self.models = ModelPicker(
            self.native, self._modality, self._update_state, ("segmentation",), bundles=False
        )
        self.model = self.models.combo
        narrow(self.model.native)
        self.out = FileEdit(mode="d", label="Output folder")
        ray_installed = importlib.util.find_spec("ray") is not None
        self.engine = ComboBox(
            label="Engine",
            choices=ENGINES if ray_installed else ("local",),
            tooltip="local: one worker process; ray: a pool of Ray workers"
            + ("" if ray_installed else " (install napari-medai[ray] for Ray)"),
        )
        self.workers = SpinBox(label="Workers", value=2, min=1, max=256)
        self.run_button = PushButton(text="Run on cohort")
        self.summary = wrapping(Label(value=IDLE_MESSAGE))
        self.form = Container(
            widgets=[
                self.cohort,
                self.use_current,
                self.model,
                self.models.delete_button,
                self.out,
                self.engine,
                self.workers,
                self.run_button,
            ],
            labels=True,
            scrollable=True,
        )
        self.runner = JobRunner()
        scroll_column(self, self.form, self.runner, self.summary.native)
        self.use_current.changed.connect(self._use_current_folder)
        for field in (self.cohort, self.out, self.engine):
            field.changed.connect(self._update_state)
        self.runner.runningChanged.connect(lambda _: self._update_state())
        self.run_button.changed.connect(self._run)
        self.models.refresh()

    def _current_image(self) -> Image | None:
        active = self._viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self._viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    def _modality(self) -> str:
        """The current scan's modality, for the picker's first pick ("" without a scan)."""
        image = self._current_image()
        return layer_modality(image) if image is not None else ""

    def _use_current_folder(self) -> None:
        folder = layer_folder(self._current_image())
        if folder is None:
            self.summary.value = "The current image was not opened from a file; pick a folder."
            return
        self.cohort.value = folder
        if str(self.out.value) in ("", "."):
            self.out.value = folder.parent / f"{folder.name}_masks"

    def why_not_ready(self) -> str | None:
        """Why Run is disabled, in words (``None`` when it can run)."""
        if self.runner.running:
            return "A cohort run is in progress."
        if str(self.cohort.value) in ("", "."):
            return "Choose the cohort: a folder of scans, a CSV manifest or a glob."
        if self.models.source is None:
            return "Pick a segmentation model, or load one from a file or folder."
        problem = self.models.task_problem()
        if problem is not None:
            return problem
        if str(self.out.value) in ("", "."):
            return "Choose the output folder."
        return None

    def _update_state(self, _value: object = None) -> None:
        reason = self.why_not_ready()
        self.run_button.enabled = reason is None
        self.run_button.tooltip = reason or "Segment every scan not done yet; results on disk"
        self.workers.enabled = self.engine.value == "ray"
        self.models.update(self.runner.running)

    def _run(self, _value: object = None) -> None:
        reason = self.why_not_ready()
        if reason is not None:
            show_info(reason)
            return
        spec = TaskSpec("segment", self.models.source)
        engine = EngineConfig(self.engine.value, int(self.workers.value))
        job = partial(
            catalogue.RUN_COHORT, str(self.cohort.value), spec, Path(self.out.value), engine
        )
        self.summary.value = ""
        self.runner.start(job, self._show_summary, on_finished=self._finished, title="Cohort run")

    def _show_summary(self, summary: CohortSummary) -> None:
        failed = [row for row in summary.rows if row["status"] == "failed"]
        warned = [row for row in summary.rows if row.get("warning")]
        lines = [
            f"{summary.done} done / {summary.failed} failed / {summary.skipped} skipped "
            f"in {summary.seconds:.0f} s; record: {summary.table}"
        ]
        lines += [f"{Path(row['input']).name}: {row['error']}" for row in failed[:SHOWN_ROWS]]
        lines += [
            f"Warning, {Path(row['input']).name}: {row['warning']}" for row in warned[:SHOWN_ROWS]
        ]
        self.summary.value = "\n".join(lines)

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome is not JobOutcome.DONE:
            self.summary.value = ""  # the runner's line says what happened
