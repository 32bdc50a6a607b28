"""Dock widget "Prompt": click, box, scribble or lasso one object and get its 3D mask.

Prompts are drawn in a Points and a Shapes layer on the scan's grid; every change updates
the object's mask through the JobRunner, shown in a preview layer. Both engines run in a
worker process kept for them, which the update's job talks to: the default one (no torch)
so that its SimpleITK calls never hold napari's GIL (core/prompt/kept.py), nnInteractive,
offered once the user picks the folder of its weights (and its package is installed), in
one of its own. Prompts that arrive while an update runs are coalesced: only the
latest set is computed next. Commit writes the object into the user's Labels layer as
label k, one undoable step. One column that scrolls inside the dock; the status wraps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Labels
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget

from napari_medai._napari.label_edits import Overwrite
from napari_medai._napari.layers import volume_from_layer
from napari_medai._napari.prompting import (
    PREVIEW_SUFFIX,
    PromptObject,
    commit_object,
    fill_label,
    layers_prompts,
    new_labels_layer,
    prompt_layers,
    prompt_update_job,
    set_polarity,
    show_preview,
)
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.layer_pickers import follow_layer_list, refresh_scan_pickers, scan_pickers
from napari_medai._qt.parts import scroll_column, wrapping
from napari_medai.core.errors import MedaiError
from napari_medai.core.prompt.engine import DEFAULT_ENGINE, available_engines, engine_named
from napari_medai.core.prompt.nninteractive_engine import NnInteractiveEngine, installed

if TYPE_CHECKING:
    import napari

#: Tool -> (layer kind, napari mode).
TOOLS = {
    "Point": ("points", "add"),
    "Box": ("shapes", "add_rectangle"),
    "Scribble": ("shapes", "add_path"),
    "Lasso": ("shapes", "add_polygon_lasso"),
}
#: Viewer shortcuts while the dock is shown (chosen clear of napari's layer shortcuts).
SHORTCUTS = {
    "Alt+1": "Point",
    "Alt+2": "Box",
    "Alt+3": "Scribble",
    "Alt+4": "Lasso",
    "N": "flip",
    "U": "undo",
    "Shift+R": "reset",
    "Shift+Enter": "commit",
}
SHORTCUT_HELP = (
    "Keys: Alt+1..4 point / box / scribble / lasso, N positive/negative, "
    "U undo prompt, Shift+R reset object, Shift+Enter commit"
)
READY = "Pick a scan, then click, box, scribble or lasso the object."
WEIGHTS_TIP = (
    "nnInteractive's model folder (it holds plans.json and fold_0), downloaded by you: "
    "its weights are not shipped with napari-medai"
)


class PromptWidget(Container):
    """Prompt one object at a time into a 3D mask; commit it as a named label."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.labels_layer, self.image_layer = scan_pickers(napari_viewer.layers)
        self.labels_layer.nullable = True
        self.labels_layer.choices = self._user_labels
        self.labels_layer.tooltip = "Left empty, Commit adds a Labels layer on the scan's grid"
        self.engine = ComboBox(
            label="Engine", choices=available_engines(None), value=DEFAULT_ENGINE
        )
        self.weights = FileEdit(label="Weights", mode="d", tooltip=WEIGHTS_TIP)
        self.weights.line_edit.native.setPlaceholderText("optional: nnInteractive's folder")
        self.weights.visible = installed()
        self.engine_note = wrapping(Label(value=""))
        self.engine_note.visible = False
        self._learned: NnInteractiveEngine | None = None
        self.tool = ComboBox(label="Tool", choices=list(TOOLS), value="Point")
        self.positive = CheckBox(text="Positive (marks the object)", value=True)
        self.label_value = SpinBox(label="Label", min=1, max=65535, value=1)
        self.label_name = LineEdit(label="Name", value="object")
        self.policy = ComboBox(
            label="Existing labels",
            choices=[("keep them", Overwrite.KEEP), ("overwrite them", Overwrite.OVERWRITE)],
            value=Overwrite.KEEP,
        )
        self.from_mask_button = PushButton(text="Start from this label")
        self.undo_button = PushButton(text="Undo prompt")
        self.reset_button = PushButton(text="Reset object")
        self.commit_button = PushButton(text="Commit")
        self.fill_button = PushButton(text="Fill between slices")
        self.keys = wrapping(Label(value=SHORTCUT_HELP))
        self.status = wrapping(Label(value=READY))
        super().__init__(labels=False)
        actions = Container(
            widgets=[self.undo_button, self.reset_button], layout="horizontal", labels=False
        )
        self.form = Container(
            widgets=[
                self.image_layer,
                self.engine,
                self.weights,
                self.engine_note,
                self.tool,
                self.positive,
                actions,
                self.labels_layer,
                self.label_value,
                self.label_name,
                self.policy,
                self.commit_button,
                self.from_mask_button,
                self.fill_button,
                self.keys,
            ],
            labels=True,
            scrollable=True,
        )
        self.runner = JobRunner()
        scroll_column(self, self.form, self.runner, self.status.native)
        self.target: PromptObject | None = None
        self._prepare = QTimer(self.native)  # dies with the dock, so never fires after it
        self._prepare.setSingleShot(True)
        self._prepare.timeout.connect(self._prepare_scan)
        self._waiting_for_view = False
        self._order: list[str] = []
        self._pending = False
        self._watched: tuple = ()
        self._connect()
        follow_layer_list(napari_viewer.layers, self._refresh_layers)
        self._refresh_layers()
        self._bind_keys()

    # -- wiring -------------------------------------------------------------------------

    def _connect(self) -> None:
        self.image_layer.changed.connect(self._scan_changed)
        self.engine.changed.connect(self._engine_changed)
        self.weights.changed.connect(self._weights_chosen)
        self.tool.changed.connect(self._use_tool)
        self.positive.changed.connect(self._polarity_changed)
        self.undo_button.changed.connect(self.undo)
        self.reset_button.changed.connect(self.reset)
        self.commit_button.changed.connect(self.commit)
        self.from_mask_button.changed.connect(self.start_from_label)
        self.fill_button.changed.connect(self.fill)
        self.runner.runningChanged.connect(self._update_buttons)

    def _bind_keys(self) -> None:
        """Bind :data:`SHORTCUTS` while the dock is shown; hidden, closed or removed, unbind.

        Keys of a dock the user cannot see would flip, undo or commit out of sight.
        """
        actions = {
            "flip": lambda: setattr(self.positive, "value", not self.positive.value),
            "undo": self.undo,
            "reset": self.reset,
            "commit": self.commit,
        }
        bindings = {}
        for key, action in SHORTCUTS.items():
            run = actions.get(action) or (lambda tool=action: setattr(self.tool, "value", tool))
            bindings[key] = lambda _viewer, run=run: run()
        self._keys = _KeysWhileShown(self.native, self._viewer, bindings)

    def _refresh_layers(self, _event=None) -> None:
        refresh_scan_pickers(self.labels_layer, self.image_layer)
        self._update_buttons()

    def _weights_chosen(self, _event=None) -> None:
        """Offer nnInteractive on the chosen folder, or say why not (nothing loads yet)."""
        if self._learned is not None:
            self._learned.close()
        self._learned, folder, refusal = None, self.weights.line_edit.value.strip(), None
        if folder:
            try:
                self._learned = engine_named("nninteractive", Path(folder))
            except MedaiError as error:
                refusal = f"Weights refused: {error}"
        self.engine.choices = available_engines(Path(folder) if self._learned else None)
        if self._learned is not None:
            self.engine.value = self._learned.name
        self._engine_changed()
        self.status.value = refusal or self.status.value

    def _engine_changed(self, _event=None) -> None:
        """Start a new object; say the learned engine's licence and where it runs."""
        self.reset()
        learned = self._learned is not None and self.engine.value == self._learned.name
        self.engine_note.visible = learned
        if learned:
            self.engine_note.value = (
                f"Weights' licence: {self._learned.folder.license} (nnInteractive's "
                "released weights are non-commercial). Runs on a GPU if there is one, "
                "else on the CPU (slow)."
            )

    def _scan_changed(self, _event=None) -> None:
        self.reset()
        # Later, not inside the layer list's event: the prompt and preview layers join the
        # list once, when the scan is picked, so no update pays for making them.
        self._prepare.start()

    def _prepare_scan(self) -> None:
        """Add the scan's prompt layers and pick the tool, once the dock is in view.

        A dock behind another tab must not add layers to every scan opened, nor take
        the active layer and its mode from the user's painting.
        """
        scan = self.image_layer.value
        if scan is None:
            return
        if self.native.visibleRegion().isEmpty():  # behind another tab, or not shown yet
            self._prepare_when_in_view()
            return
        show_preview(self._viewer, scan, None)  # under the prompts, which stay visible
        self._use_tool()

    def _prepare_when_in_view(self) -> None:
        """Prepare the scan when the dock's tab is raised (QDockWidget.visibilityChanged)."""
        dock = self.native.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is not None and not self._waiting_for_view:
            self._waiting_for_view = True
            dock.visibilityChanged.connect(self._on_view_changed)

    def _on_view_changed(self, visible: bool) -> None:
        if visible:
            self._prepare.start()

    def _user_labels(self, _widget=None) -> list[Labels]:
        """Labels layers to commit into: every one but a prompt preview."""
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Labels) and not layer.name.endswith(PREVIEW_SUFFIX)
        ]

    def _layers(self):
        """The scan's prompt layers (added the first time), watched for new prompts."""
        scan = self.image_layer.value
        points, shapes = prompt_layers(self._viewer, scan)
        if self._watched != (points, shapes):
            for layer, kind in ((points, "points"), (shapes, "shapes")):
                layer.events.data.connect(
                    lambda event, kind=kind: self._prompts_changed(event, kind)
                )
            self._watched = (points, shapes)
            set_polarity(points, shapes, self.positive.value)
        return points, shapes

    def _use_tool(self, _event=None) -> None:
        if self.image_layer.value is None:
            return
        points, shapes = self._layers()
        kind, mode = TOOLS[self.tool.value]
        layer = points if kind == "points" else shapes
        self._viewer.layers.selection.active = layer
        layer.mode = mode

    def _polarity_changed(self, _event=None) -> None:
        if self.image_layer.value is not None:
            set_polarity(*self._layers(), self.positive.value)

    def _update_buttons(self, _event=None) -> None:
        has_scan = self.image_layer.value is not None
        has_mask = self.target is not None and self.target.mask is not None
        self.commit_button.enabled = has_mask and not self.runner.running
        self.commit_button.tooltip = "" if has_mask else "Prompt an object first"
        has_labels = self.labels_layer.value is not None
        self.fill_button.enabled = has_labels
        self.from_mask_button.enabled = has_labels and has_scan
        self.fill_button.tooltip = "" if has_labels else "Pick a Labels layer with label k painted"

    # -- prompting ----------------------------------------------------------------------

    def _points_changed(self, event) -> None:
        self._prompts_changed(event, "points")

    def _shapes_changed(self, event) -> None:
        self._prompts_changed(event, "shapes")

    def _prompts_changed(self, event, kind: str) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("added"):
            self._order.append(kind)
        if action.split(".")[-1].lower() in ("added", "removed", "changed"):
            self.update_object()

    def _object(self) -> PromptObject:
        if self.target is None:
            volume = volume_from_layer(self.image_layer.value)
            self.target = PromptObject(volume, self.engine.value)
        return self.target

    def update_object(self) -> None:
        """Compute the object for the current prompts; coalesce while an update runs."""
        if self.image_layer.value is None:
            self.status.value = "Open or pick a scan first."
            return
        if self.runner.running:
            self._pending = True
            return
        self._pending = False
        try:
            prompts = layers_prompts(*self._layers(), self._object().volume.spatial_shape)
        except MedaiError as error:
            self.status.value = f"Prompt refused: {error}"
            return
        target = self.target
        learned = self._learned
        if target.session is None and learned is not None and target.engine == learned.name:
            # Its start does no work: the scan goes to its worker in the first update.
            target.session = learned.start(target.volume, target.initial)
        self.runner.start(
            lambda: prompt_update_job(target, prompts),
            lambda result: self._show(target, result),
            on_finished=self._finished,
            title="Prompt",
        )

    def _show(self, target: PromptObject, result) -> None:
        if target is not self.target:  # reset while it ran
            return
        target.mask = result.mask.array.astype(bool)
        show_preview(self._viewer, self.image_layer.value, result.mask.array)
        device = getattr(target.session, "device", None)  # a learned engine's
        self.status.value = (
            f"object: {result.ml:.1f} mL ({result.voxels} voxels), "
            f"updated in {result.seconds:.2f} s" + (f" on the {device.upper()}" if device else "")
        )

    def _finished(self, outcome: JobOutcome) -> None:
        self._update_buttons()
        if self._pending:
            self.update_object()

    def undo(self) -> None:
        """Remove the last prompt (the object updates)."""
        if self.image_layer.value is None:
            return
        points, shapes = self._layers()
        layers = {"points": points, "shapes": shapes}
        while self._order and not len(layers[self._order[-1]].data):
            self._order.pop()
        kind = self._order.pop() if self._order else ("shapes" if len(shapes.data) else "points")
        layer = layers[kind]
        if len(layer.data):
            layer.selected_data = {len(layer.data) - 1}
            layer.remove_selected()

    def reset(self, _event=None) -> None:
        """Forget the object: clear its prompts and preview, start a new session."""
        self.target = None
        self._order = []
        self._pending = False
        scan = self.image_layer.value
        if scan is not None and self._watched:
            for layer in self._watched:
                with layer.events.data.blocker():
                    layer.data = []
            show_preview(self._viewer, scan, None)
        self.status.value = READY
        self._update_buttons()

    def start_from_label(self, _event=None) -> None:
        """Refine label k of the picked Labels layer: it becomes the object's starting mask."""
        layer, value = self.labels_layer.value, int(self.label_value.value)
        if layer is None or self.image_layer.value is None:
            return
        initial = np.asarray(layer.data) == value
        if initial.shape != self.image_layer.value.data.shape or not initial.any():
            self.status.value = f"'{layer.name}' has no label {value} on this scan's grid."
            return
        self.reset()
        self._object().initial = initial
        self.target.mask = initial
        show_preview(self._viewer, self.image_layer.value, initial)
        self.status.value = f"Refining label {value} of '{layer.name}': add prompts to change it."
        self._update_buttons()

    def commit(self, _event=None) -> None:
        """Write the object into the Labels layer as label k (Ctrl+Z undoes), then reset."""
        if self.runner.running or self._pending:
            self.status.value = "Still updating: commit when the preview is up to date."
            return
        if self.target is None or self.target.mask is None:
            self.status.value = "Nothing to commit: prompt an object first."
            return
        layer = self.labels_layer.value or new_labels_layer(self._viewer, self.image_layer.value)
        self.labels_layer.value = layer
        value, name = int(self.label_value.value), self.label_name.value.strip() or "object"
        try:
            edit = commit_object(layer, self.target.mask, value, name, self.policy.value)
        except MedaiError as error:
            self.status.value = f"Commit refused: {error}"
            return
        self.reset()
        self.status.value = f"Committed '{name}' as label {value}: {edit.message}"
        self.label_value.value = value + 1

    def fill(self, _event=None) -> None:
        """Interpolate label k of the Labels layer between its painted slices (undoable)."""
        layer, value = self.labels_layer.value, int(self.label_value.value)
        if layer is None:
            return
        try:
            edit, summary = fill_label(layer, value)
        except MedaiError as error:
            self.status.value = f"Fill refused: {error}"
            return
        self.status.value = f"{summary}; {edit.message}" if edit.changed else summary


class _KeysWhileShown(QObject):
    """Binds ``bindings`` on the viewer while ``widget`` is shown, and takes them off after.

    napari removes a closed dock by unparenting its widget, which hides it; the hide
    button and the Window menu hide the dock. Spontaneous events (the window minimised)
    change nothing.
    """

    def __init__(self, widget, viewer: napari.viewer.Viewer, bindings: dict) -> None:
        super().__init__(widget)
        self._viewer = viewer
        self._bindings = bindings
        widget.installEventFilter(self)
        if widget.isVisible():
            self._bind()

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if not event.spontaneous():
            if event.type() == QEvent.Type.Show:
                self._bind()
            elif event.type() == QEvent.Type.Hide:
                self._unbind()
        return False

    def _bind(self) -> None:
        for key, function in self._bindings.items():
            self._viewer.bind_key(key, function, overwrite=True)

    def _unbind(self) -> None:
        """Take off the keys still bound to this dock (another may have rebound one since)."""
        for key, function in self._bindings.items():
            unbound = self._viewer.bind_key(key, None, overwrite=True)
            if unbound is not None and unbound is not function:
                self._viewer.bind_key(key, unbound, overwrite=True)
