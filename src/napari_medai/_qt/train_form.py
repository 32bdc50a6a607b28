"""The Train dock's form: what to train on and how, as a :class:`TrainConfig`.

Rows of (scan, labels) pickers, the model's name and label names, the model
to start from (listed by the texts every model picker shows), network,
budgets and the clock the time budget counts, seed, CPU threads and where
the model goes, then the Train button. The dock
(:class:`~napari_medai._qt.train_widget.TrainWidget`) adds what runs from it;
the CLI fills in the same config (``tests/qt/test_train_matches_cli.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from qtpy.QtGui import QIntValidator
from qtpy.QtWidgets import QFileDialog

from napari_medai._napari.generation import augmentation_for
from napari_medai._napari.training import default_output_dir
from napari_medai._qt.model_picker import source_task
from napari_medai._qt.pair_row import PairRow
from napari_medai._qt.parts import OnPress
from napari_medai.core.models.card import SEGMENTATION_TASKS
from napari_medai.core.models.registry import list_models, picker_items, user_model_dir
from napari_medai.core.training.config import (
    DIMENSIONALITIES,
    TrainConfig,
    training_threads,
)

if TYPE_CHECKING:
    import napari

NEW_MODEL = "New model"
LAST_MODEL = "Last trained model"
MODEL_FOLDER = "Model folder..."
#: "Start from" values that are no model's path: the last model trained here, a folder dialog.
_LAST, _BROWSE = "\0last", "\0browse"
DEFAULT_TIME_BUDGET_S = 60.0
#: What the time budget counts, as the CLI's ``--budget-clock`` (see ``BUDGET_CLOCKS``).
BUDGET_CLOCK_CHOICES = [("wall time", "wall"), ("CPU time", "cpu")]


class TrainForm(Container):
    """The fields of a training run; :meth:`config` turns them into a :class:`TrainConfig`.

    The fields and the Train button sit in :attr:`form`, a column that scrolls
    inside the dock when space is short. Starts with no pair row: the dock
    adds the first once it is built.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.form = Container(labels=True, scrollable=True)
        self._viewer = napari_viewer
        self._rows: list[PairRow] = []
        self._start_folders: list[str] = []
        #: The last model trained (listed, or a draft waiting for Keep), once on disk.
        self.last_model: Path | None = None

        self._pairs = Container(labels=False)
        self._pairs.margins = (0, 0, 0, 0)
        self.add_pair_button = PushButton(text="Add pair", tooltip="Train on several scans")
        self.name_edit = LineEdit(label="Model name", tooltip="How the model is listed")
        self.name_edit.native.setPlaceholderText("e.g. liver (default: the label names)")
        self.label_names_edit = LineEdit(label="Label names")
        self.label_names_edit.native.setPlaceholderText("e.g. liver  or  1: liver, 2: spleen")
        self.start_combo = ComboBox(label="Start from", choices=self._start_choices)
        self.start_combo.tooltip = (
            "Start from scratch, or fine-tune a segmentation model (a model package)"
        )
        self.dimensionality_combo = ComboBox(label="Network", choices=DIMENSIONALITIES)
        self.dimensionality_combo.tooltip = (
            "auto: 2.5D for a few painted axial slices, 3D for dense labels or other axes"
        )
        self.time_spin = FloatSpinBox(label="Time budget", max=24 * 3600.0, step=10.0)
        self.time_spin.value = DEFAULT_TIME_BUDGET_S
        self.clock_combo = ComboBox(label="Budget counts", choices=BUDGET_CLOCK_CHOICES)
        self.clock_combo.tooltip = (
            "wall time: seconds on the clock. CPU time: seconds the training computes, which "
            "buys the same training however busy the computer is (the CLI's --budget-clock)"
        )
        self.iterations_spin = SpinBox(label="Iterations", max=10_000_000)
        self.seed_edit = LineEdit(label="Seed")
        self.seed_edit.native.setPlaceholderText("random")
        self.seed_edit.native.setValidator(QIntValidator(0, 2**31 - 1))
        self.seed_edit.tooltip = (
            "A number trains the same model again from the same labels (the CLI's --seed); "
            "empty: a new random start each time"
        )
        self._auto_threads = 1
        self.threads_combo = ComboBox(label="CPU threads", choices=self._thread_choices)
        self.threads_combo.tooltip = (
            "CPU threads for training; auto (N): the N cores other programs leave free now "
            "(training runs below napari's priority, so napari stays responsive)"
        )
        self.output_edit = LineEdit(label="Save to")
        self.output_edit.native.setPlaceholderText("the model list (default)")
        self.output_edit.tooltip = "Folder for the model package instead (must not exist yet)"
        self.browse_button = PushButton(text="Choose folder...")
        #: The dock connects it (it ends the form, above what runs from it).
        self.train_button = PushButton(text="Train")
        self.form.extend(
            [self.add_pair_button, self.name_edit, self.label_names_edit, self.start_combo]
            + [self.dimensionality_combo, self.time_spin, self.clock_combo, self.iterations_spin]
            + [self.seed_edit, self.threads_combo, self.output_edit, self.browse_button]
            + [self.train_button]
        )
        # The pairs span the column: their own "Scan" and "Labels" rows read in full.
        self.form.native.layout().insertWidget(0, self._pairs.native)
        self.time_spin.native.setSuffix(" s")
        for spin in (self.time_spin, self.iterations_spin):
            spin.tooltip = "0: no limit"
        self.add_pair_button.changed.connect(lambda _value=None: self.add_pair())
        self.start_combo.changed.connect(self._on_start_chosen)
        self.start_combo.native.installEventFilter(OnPress(self.reset_start_choices, self.native))
        self.browse_button.changed.connect(self._browse_output)

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers into the pair pickers and the free cores into "auto" (napari
        calls this on layer changes). The models to start from are re-read when their list
        is opened or a model is trained, not here: reading every model card on each layer
        change would stall napari."""
        self._refresh_threads()
        for row in self._rows:
            row.reset_choices()

    # Pairs ------------------------------------------------------------------------

    @property
    def pair_rows(self) -> list[PairRow]:
        """The rows of (image, labels) pickers, first one first."""
        return list(self._rows)

    def add_pair(self, image: Image | None = None, labels: Labels | None = None) -> PairRow:
        """Add a row of pickers, set to ``image`` and ``labels`` when given."""
        for earlier in self._rows:  # painting for the new pair leaves the others alone
            earlier.labels_chosen = True
        row = PairRow(self._viewer)
        row.remove_button.changed.connect(lambda _value=None: self._remove_pair(row))
        row.changed.connect(self._update_buttons)
        if image is not None:
            row.image_combo.value = image
        if labels is not None:
            row.labels_combo.value = labels
        self._rows.append(row)
        self._pairs.append(row)
        self._show_remove_buttons()
        self._update_buttons()
        return row

    def _remove_pair(self, row: PairRow) -> None:
        if len(self._rows) > 1:
            self._rows.remove(row)
            self._pairs.remove(row)
            self._show_remove_buttons()
            self._update_buttons()

    def _show_remove_buttons(self) -> None:
        """A pair can be removed while another one is left."""
        for row in self._rows:
            row.remove_button.visible = len(self._rows) > 1

    def selected_pairs(self) -> list[tuple[Image, Labels]]:
        """The complete (image, labels) pairs picked, in row order."""
        return [pair for row in self._rows if (pair := row.pair()) is not None]

    # Settings ---------------------------------------------------------------------

    def _start_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        """A new model, the last one trained here, the listed segmentation packages by the
        texts every model picker shows them with, folders chosen here, then the dialog."""
        listed = [
            entry
            for entry in list_models()
            if entry.kind == "package" and source_task(entry.location) in SEGMENTATION_TASKS
        ]
        locations = {str(entry.location) for entry in listed}
        folders = [folder for folder in self._start_folders if folder not in locations]
        last = [(LAST_MODEL, _LAST)] if self.last_model is not None else []
        return [(NEW_MODEL, ""), *last, *picker_items(listed, folders), (MODEL_FOLDER, _BROWSE)]

    def reset_start_choices(self) -> None:
        """Re-read the models to start from, in order, keeping the pick while it is offered.

        Emptied first: magicgui would append a new model after "Model folder...".
        """
        picked = self.start_combo.value
        with self.start_combo.changed.blocked():
            self.start_combo.native.clear()
            self.start_combo.reset_choices()
            if picked in self.start_combo.choices:
                self.start_combo.value = picked

    def set_start_model(self, path: str | Path | None) -> None:
        """Fine-tune the model package at ``path`` next; None starts a new model."""
        source = "" if path is None else str(path)
        if source and source not in self._start_folders:
            self._start_folders.append(source)
        self.reset_start_choices()
        with self.start_combo.changed.blocked():
            self.start_combo.value = source
        self._update_buttons()

    def start_model(self) -> Path | None:
        """The model package training starts from, or None for a new model."""
        value = self.start_combo.value
        if value == _LAST:
            return self.last_model
        return Path(value) if value and value != _BROWSE else None

    def _on_start_chosen(self, value: str) -> None:
        if value != _BROWSE:
            self._update_buttons()
            return
        path = QFileDialog.getExistingDirectory(self.native, "Model package to start from")
        self.set_start_model(path or None)

    def _browse_output(self, _value: Any = None) -> None:
        path, _filter = QFileDialog.getSaveFileName(
            self.native, "New folder for the trained model", str(user_model_dir())
        )
        if path:
            self.output_edit.value = path

    def output_dir(self) -> Path:
        """Where the next model goes: the typed folder, else a new draft folder."""
        text = self.output_edit.value.strip()
        return Path(text).expanduser() if text else default_output_dir(self.name_edit.value)

    def config(self, out_dir: Path) -> TrainConfig:
        """The settings as the core config (the CLI fills in the same object)."""
        return TrainConfig(
            out_dir=out_dir,
            dimensionality=self.dimensionality_combo.value,
            max_time_s=self.time_spin.value or None,
            budget_clock=self.clock_combo.value,
            max_iters=self.iterations_spin.value or None,
            seed=self.seed(),
            init=self.start_model(),
            num_threads=self.threads_combo.value or self.auto_threads(),
            name=self.name_edit.value.strip() or None,
            augmentation=augmentation_for(self._viewer),
        )

    def seed(self) -> int | None:
        """The seed typed (the field takes whole numbers only), or None for a random start."""
        text = self.seed_edit.value.strip()
        return int(text) if text else None

    def _thread_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        """ "auto (N)" (value 0: the N cores free now, re-read on each call), then 1, 2, ..."""
        self._auto_threads = training_threads()
        cores = range(1, (os.cpu_count() or 1) + 1)
        return [(f"auto ({self._auto_threads})", 0)] + [(str(n), n) for n in cores]

    def auto_threads(self, _value: Any = None) -> int:
        """The threads "auto" means now (free cores vary with load); its entry says so."""
        self._refresh_threads()
        return self._auto_threads

    def _refresh_threads(self) -> None:
        """Re-read "auto (N)", keeping the pick. The list is emptied first: magicgui
        would move an "auto" entry whose text changed after the numbers."""
        picked = self.threads_combo.value
        with self.threads_combo.changed.blocked():
            self.threads_combo.native.clear()
            self.threads_combo.reset_choices()
            self.threads_combo.value = picked

    def _update_buttons(self, _value: Any = None) -> None:
        """Called when the pairs or the start model change; the dock re-checks its buttons."""
