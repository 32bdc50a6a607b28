"""A dock's model picker: listed models for its task, models loaded from disk, delete.

Offers the registry's available models whose card task is one the dock runs
(a MONAI bundle's task is known only once it is loaded: listed where the dock
asks for bundles), then files and folders the user loaded, then two entries
that open a file dialog. Until the user picks a model, it picks the first one
made for the image's modality (or for any scan); none when no listed model
fits. Delete removes a model of the user's folder after asking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, PushButton
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_medai._qt.parts import OnPress
from napari_medai.core.errors import MedaiError
from napari_medai.core.models.card import CARD_FILE, ModelCard, package_file
from napari_medai.core.models.deepbet import DEEPBET_NAME, deepbet_card
from napari_medai.core.models.fit import best_fit
from napari_medai.core.models.formats import WEIGHT_SUFFIXES, is_model_package
from napari_medai.core.models.registry import (
    ModelEntry,
    delete_model,
    list_models,
    picker_items,
)

LOAD_FILE = "Load from file..."
LOAD_FOLDER = "Load from folder..."
#: Values of the two entries that open a file dialog instead of naming a model.
_LOAD_ACTIONS = {LOAD_FILE: "\0load file", LOAD_FOLDER: "\0load folder"}
_MODEL_FILES = "Model files ({});;All files (*)".format(
    " ".join(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)
)


def source_task(source: str | Path) -> str | None:
    """The card task of the model at ``source`` (a registry name or a path), read without
    loading it; None when unknown before loading (a bundle, a weights file, an unreadable card).
    """
    if str(source) == DEEPBET_NAME:
        return deepbet_card().task
    if not is_model_package(Path(source)):
        return None
    try:
        return ModelCard.read(package_file(Path(source), CARD_FILE)).task
    except MedaiError:
        return None


class ModelPicker:
    """A model combo box and its "Delete this model..." button.

    ``modality`` gives the picked image's modality ("" for none), for the
    best fit; ``on_change`` runs after every change of the pick or the list.
    ``tasks`` are the card tasks listed, the dock's own first (None: every
    task); ``bundles`` says whether MONAI bundles, whose task is unknown before
    loading, are listed. A model loaded from a file or folder is offered
    whatever its task; :meth:`task_problem` says when its card names another.
    """

    def __init__(
        self,
        parent: QWidget,
        modality: Callable[[], str],
        on_change: Callable[[], None],
        tasks: Sequence[str] | None = None,
        bundles: bool = True,
    ) -> None:
        self._parent = parent
        self._tasks = None if tasks is None else tuple(tasks)
        self._bundles = bundles
        self._modality = modality
        self._on_change = on_change
        self._loaded_sources: list[str] = []
        self._entries: dict[str, ModelEntry] = {}
        #: The registry name or path of the picked model, or None.
        self.source: str | None = None
        #: True until the user picks a model: the best fit is picked meanwhile.
        self.automatic = True
        self.combo = ComboBox(label="Model", choices=self._choices, nullable=True)
        self.delete_button = PushButton(text="Delete this model...")
        self.combo.native.installEventFilter(OnPress(self.refresh, parent))
        self.combo.changed.connect(self._on_chosen)
        self.delete_button.changed.connect(self.delete)

    def entry(self) -> ModelEntry | None:
        """The registry entry of the picked model; None for none or a loaded file."""
        return self._entries.get(self.source or "")

    def is_listed(self, source: str) -> bool:
        """Whether ``source`` is a registry model (its card is known before loading)."""
        return source in self._entries

    def lists(self, entry: ModelEntry) -> bool:
        """Whether this picker offers the listed model ``entry`` (its task is the dock's)."""
        if self._tasks is None:
            return True
        if entry.kind == "bundle":
            return self._bundles
        return source_task(entry.location or entry.name) in self._tasks

    def task_problem(self) -> str | None:
        """Why the picked model cannot do the dock's task, when its card says so; else None."""
        source = self.source
        task = None if source is None or self._tasks is None else source_task(source)
        if task is None or task in self._tasks:
            return None
        entry = self.entry()
        name = entry.title if entry is not None and entry.title else Path(source).name
        return f"'{name}' is a {task} model (its card says so); pick a {self._tasks[0]} model"

    def _choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        """The dock's registry models, then models loaded from disk, then the load entries."""
        entries = [entry for entry in list_models() if self.lists(entry)]
        items = picker_items(entries, self._loaded_sources)
        self._entries = {source: entry for (_text, source), entry in zip(items, entries)}
        return items + [(text, action) for text, action in _LOAD_ACTIONS.items()]

    def refresh(self) -> None:
        """Re-read the model list; keep the pick, or pick the best fit until the user picks.

        The list is emptied first: magicgui would append a model new since the last
        refresh (one just trained) after the load entries.
        """
        with self.combo.changed.blocked():
            self.combo.native.clear()
            self.combo.reset_choices()
            for index in range(self.combo.native.count()):
                entry = self._entries.get(self.combo.native.itemData(index))
                tip = entry.description if entry is not None else None
                self.combo.native.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            if self.source not in self.combo.choices:
                self.source = None
            if self.automatic:
                self.source = self._best_model()
            self.combo.value = self.source
        self._on_change()

    def follow_scan(self) -> None:
        """Until the user picks, pick the best fit for the scan now picked among the models
        last read (a layer change must not re-read every card on disk: that stalled napari)."""
        if not self.automatic:
            return
        with self.combo.changed.blocked():
            self.source = self._best_model()
            self.combo.value = self.source
        self._on_change()

    def _best_model(self) -> str | None:
        entries = list(self._entries.items())
        index = best_fit([entry for _, entry in entries], self._modality())
        return None if index is None else entries[index][0]

    def add_source(self, path: str | Path) -> None:
        """Offer the model at ``path`` (file or folder) in the picker and pick it."""
        source = str(path)
        if source not in self._loaded_sources:
            self._loaded_sources.append(source)
        self.automatic = False
        self.source = source
        self.refresh()

    def _on_chosen(self, value: Any) -> None:
        if value not in _LOAD_ACTIONS.values():
            self.automatic = False
            self.source = value
            self._on_change()
            return
        if value == _LOAD_ACTIONS[LOAD_FILE]:
            path, _filter = QFileDialog.getOpenFileName(
                self._parent, "Load a model file", "", _MODEL_FILES
            )
        else:
            path = QFileDialog.getExistingDirectory(
                self._parent, "Load a model folder (model package or MONAI bundle)"
            )
        if path:
            self.add_source(path)
            return
        with self.combo.changed.blocked():
            self.combo.value = self.source

    def update(self, running: bool) -> None:
        """Show Delete for a model of the user's folder; not while a job runs."""
        entry = self.entry()
        self.delete_button.visible = entry is not None and entry.kind != "builtin"
        self.delete_button.enabled = not running

    def delete(self, _value: Any = None) -> bool:
        """Delete the picked model of the user's folder, once the user confirms."""
        entry = self.entry()
        if entry is None or entry.kind == "builtin":
            return False
        answer = QMessageBox.question(
            self._parent,
            "Delete model",
            f"Delete the model '{entry.summary}' and its files in {entry.location}?\n"
            "This cannot be undone.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        try:
            delete_model(entry)
        except (MedaiError, OSError) as error:
            show_error(f"Delete failed: {error}")
            return False
        self.source, self.automatic = None, True
        self.refresh()
        return True
