"""Dock widget "Cohort": segment a whole folder (or manifest) of scans in the background.

Hands the folder of the current scan, or any folder, CSV manifest or glob, to
a cohort run (``core.cohort.run``) through the :class:`JobRunner`. The
masks stay on disk in the output folder with the run record; nothing is added
to the layer list. Running again resumes: finished scans are skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_medai._qt.job_runner import JobRunner

if TYPE_CHECKING:
    import napari

ENGINES = ("local", "ray")


def layer_folder(layer: object) -> Path | None:
    """The folder of the file an image layer was opened from (``None`` if not from a file)."""
    source = getattr(getattr(layer, "source", None), "path", None)
    if not source:
        return None
    path = Path(source)
    return path if path.is_dir() else path.parent


class CohortWidget(QWidget):
    """Cohort (folder, CSV or glob), model, output folder, engine; Run; progress and summary."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        self.cohort = FileEdit(mode="d", label="Cohort", tooltip="folder of scans, CSV or glob")
        self.use_current = PushButton(text="Use the current scan's folder")
        self.model = LineEdit(label="Model", tooltip="a model name, package folder or file")
        self.out = FileEdit(mode="d", label="Output folder")
        ray_installed = importlib.util.find_spec("ray") is not None
        self.engine = ComboBox(
            label="Engine",
            choices=ENGINES if ray_installed else ("local",),
            tooltip="local: this process; ray: a pool of Ray workers"
            + ("" if ray_installed else " (install napari-medai[ray] for Ray)"),
        )
        self.workers = SpinBox(label="Workers", value=2, min=1, max=256)
        self.run_button = PushButton(text="Run on cohort")
        self.summary = Label(value="Results are written to the output folder, not to layers.")
        self.form = Container(
            widgets=[
                self.cohort,
                self.use_current,
                self.model,
                self.out,
                self.engine,
                self.workers,
                self.run_button,
            ]
        )
        self.runner = JobRunner()
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.runner)
        layout.addWidget(self.summary.native)
        layout.addStretch(1)
        self.summary.native.setWordWrap(True)
        self.use_current.changed.connect(self._use_current_folder)
        for field in (self.cohort, self.model, self.out, self.engine):
            field.changed.connect(self._update_state)
        self.runner.runningChanged.connect(lambda _: self._update_state())
        self.run_button.changed.connect(self._run)
        self._update_state()

    def _current_image(self) -> Image | None:
        active = self._viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self._viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

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
        if not self.model.value.strip():
            return "Name the model (a name from 'napari-medai models', or a package folder)."
        if str(self.out.value) in ("", "."):
            return "Choose the output folder."
        return None

    def _update_state(self) -> None:
        reason = self.why_not_ready()
        self.run_button.enabled = reason is None
        self.run_button.tooltip = reason or "Segment every scan not done yet; results on disk"
        self.workers.enabled = self.engine.value == "ray"

    def _run(self) -> None:
        from napari_medai.core.cohort.manifest import read_manifest
        from napari_medai.core.cohort.run import EngineConfig, cohort_job
        from napari_medai.core.cohort.tasks import TaskSpec

        source = str(self.cohort.value)
        spec = TaskSpec("segment", self.model.value.strip())
        engine = EngineConfig(self.engine.value, int(self.workers.value))
        out = Path(self.out.value)
        self.summary.value = "Running..."

        def job():
            return cohort_job(read_manifest(source), spec, out, engine)

        self.runner.start(job, self._show_summary, title="Cohort run")

    def _show_summary(self, summary) -> None:
        failed = [row for row in summary.rows if row["status"] == "failed"]
        lines = [
            f"{summary.done} done / {summary.failed} failed / {summary.skipped} skipped "
            f"in {summary.seconds:.0f} s; record: {summary.table}"
        ]
        lines += [f"{Path(row['input']).name}: {row['error']}" for row in failed[:5]]
        self.summary.value = "\n".join(lines)
