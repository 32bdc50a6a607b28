"""Dock widget "Export": a Labels layer out as NIfTI, NRRD, MHA, DICOM-SEG or RTSTRUCT.

A magicgui form (its layer pickers follow the layer list by themselves); the
export runs as a core job through the :class:`JobRunner`. The mask goes on
the picked scan's grid, or with no scan picked on the grid File > Save would
take (:func:`~napari_medai._napari.scan_grid.labels_on_scan_grid`): never silently
at origin 0 with 1 mm voxels. It asks before replacing a file, and a failed
export changes neither the layer nor any file.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medai._napari.export import ExportInput, export_input, is_dicom_source, source_path
from napari_medai._napari.scan_grid import open_scans
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.layer_pickers import follow_layer_list, refresh_scan_pickers, scan_pickers
from napari_medai._qt.parts import ask_overwrite, scroll_column, wrapping
from napari_medai.core.errors import MedaiError
from napari_medai.core.files import compound_stem, compound_suffix
from napari_medai.core.io import exporters
from napari_medai.core.io.dicom_export import ALGORITHM_TYPES, DicomExportConfig
from napari_medai.core.io.export import ExportConfig, ExportResult, export_job, sidecar_path
from napari_medai.core.io.exporters import Exporter, exporter_named

if TYPE_CHECKING:
    import napari


class ExportWidget(Container):
    """Pick the labels, the scan they were drawn on, a format and a file; Export."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.labels_layer, self.image_layer = scan_pickers(napari_viewer.layers)
        formats = [(exporter.label, exporter.name) for exporter in exporters.EXPORTERS]
        self.format = ComboBox(label="Format", choices=formats)
        self.path = FileEdit(label="Save as", mode="w")
        self.algorithm = ComboBox(label="Algorithm", choices=ALGORITHM_TYPES, value="auto")
        self.algorithm.tooltip = (
            "auto: AUTOMATIC with the model's name if a model made the mask, MANUAL if it "
            "was painted. Pick semiautomatic if you edited a model's mask"
        )
        self.deidentify = CheckBox(text="De-identify (PS3.15 basic profile, UIDs kept)")
        self.new_uids = CheckBox(text="Allow new UIDs for an anonymised series")
        self.new_uids.tooltip = (
            "For a series whose UIDs were blanked: the file then references new UIDs, so a "
            "PACS cannot link it to the scan; only its positions place it"
        )
        self.compact = CheckBox(text="Compact SEG (LABELMAP, JPEG-LS)")
        self.compact.tooltip = (
            "One frame per slice instead of one per slice and label: far smaller with many "
            "labels, but only recent viewers read it"
        )
        self.sidecar = CheckBox(text="JSON provenance sidecar", value=True)
        # DicomExportConfig field -> its widget; enabled when the format honours it.
        self._dicom_choices = {
            "algorithm": self.algorithm,
            "deidentify": self.deidentify,
            "new_uids": self.new_uids,
            "compact": self.compact,
        }
        self.status = wrapping(Label(value=""))
        self.export_button = PushButton(text="Export")
        super().__init__(labels=False)
        self.form = Container(
            widgets=[
                self.labels_layer,
                self.image_layer,
                self.format,
                self.path,
                self.algorithm,
                self.deidentify,
                self.new_uids,
                self.compact,
                self.sidecar,
                self.export_button,
            ],
            labels=True,
            scrollable=True,
        )
        self.runner = JobRunner()
        scroll_column(self, self.form, self.runner, self.status.native)
        self.last_result: ExportResult | None = None
        #: The reason Export was disabled, as last shown in the status line.
        self._reason = ""

        self.export_button.changed.connect(self.export)
        self.path.changed.connect(self._format_from_name)
        for widget in (self.labels_layer, self.image_layer, self.format, self.path):
            widget.changed.connect(self._update)
        self.runner.runningChanged.connect(self._update)
        layers = napari_viewer.layers
        follow_layer_list(layers, self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, _event=None) -> None:
        refresh_scan_pickers(self.labels_layer, self.image_layer)
        self._update()

    def _format_from_name(self, _event=None) -> None:
        """A name typed with another format's suffix picks that format (organs.nrrd: NRRD);
        a name with no known suffix, or the chosen format's own, keeps the choice."""
        path = Path(self.path.value)
        suffix = compound_suffix(path)
        if not suffix or suffix in (self.exporter.suffix, *self.exporter.guessed_from):
            return
        try:
            self.format.value = exporters.exporter_for(path).name
        except MedaiError:
            return  # not a format's suffix: the chosen format's is added on export

    @property
    def exporter(self) -> Exporter:
        """The exporter of the chosen format."""
        return exporter_named(self.format.value)

    def blocker(self) -> str:
        """Why Export cannot run now ("" when it can)."""
        if self.runner.running:
            return "an export is running"
        if self.labels_layer.value is None:
            return "Add or pick a Labels layer to export"
        if not str(self.path.value) or Path(self.path.value).name in ("", "."):
            return "Choose a file to save as"
        if self.exporter.needs_series and not is_dicom_source(self.image_layer.value):
            return (
                f"{self.exporter.label} needs the scan to come from a DICOM "
                "series; export NIfTI or NRRD instead"
            )
        return ""

    def _update(self, _event=None) -> None:
        for choice, widget in self._dicom_choices.items():
            widget.enabled = choice in self.exporter.choices
        reason = self.blocker()
        self.export_button.enabled = not reason
        self.export_button.tooltip = reason or "Write the file (and its sidecar)"
        if self.runner.running:
            return
        if reason:
            self.status.value = reason
        elif self.status.value == self._reason:  # the reason is past
            self.status.value = ""
        self._reason = reason

    def output_path(self) -> Path:
        """The chosen file, with the format's suffix added when it has none of its own."""
        path = Path(self.path.value)
        suffix = self.exporter.suffix
        return path if path.name.endswith(suffix) else path.with_name(compound_stem(path) + suffix)

    def export(self, _event=None) -> None:
        """Ask before replacing files, then run the export job."""
        reason = self.blocker()
        if reason:
            show_info(reason)
            return
        path = self.output_path()
        existing = [p for p in (path, sidecar_path(path)) if p.exists()]
        if self.sidecar.value is False:
            existing = [p for p in existing if p == path]
        if existing and not ask_overwrite(self.native, existing):
            self.status.value = "not exported: the file exists"
            return
        try:
            inputs = export_input(
                self.labels_layer.value, self.image_layer.value, open_scans(self._viewer.layers)
            )
        except MedaiError as error:
            self.status.value = f"Export refused: {error}"
            show_error(f"Export refused: {error}")
            return
        self.status.value = ""
        config = ExportConfig(
            format=self.format.value,
            dicom=DicomExportConfig(
                self.algorithm.value,
                self.deidentify.value,
                self.new_uids.value,
                self.compact.value,
            ),
            sidecar=self.sidecar.value,
        )
        source = inputs.source if inputs.source is not None else source_path(self.image_layer.value)

        def job():
            return export_job(
                inputs.label_map,
                path,
                config,
                inputs.provenance,
                source,
                inputs.series_uid,
                inputs.colors,
                overwrite=bool(existing),
            )

        done = partial(self._done, inputs)
        self.runner.start(job, done, on_finished=self._finished, title="Export")

    def _done(self, inputs: ExportInput, result: ExportResult) -> None:
        self.last_result = result
        for info in inputs.infos:
            show_info(info)
        for warning in inputs.warnings + result.warnings:
            show_warning(f"Export: {warning}")
        self.status.value = "wrote " + ", ".join(path.name for path in result.paths)

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome is not JobOutcome.DONE:
            self.status.value = ""  # the runner's line says what happened
