"""Dock widget: CT window presets, percentile auto-contrast, and window/level by mouse drag.

Presets say which modality they are for (all are CT windows in HU); they are
disabled, with a tooltip saying why, while the images they would act on are
not CT. The drag (Ctrl + left drag on the canvas, or a plain left drag while
"Drag to set window/level" is on; see ``_napari/window_level.py``) and the
presets act on the same images, and the dock shows their current window in
the scan's units. The buttons scroll inside the dock when space is short, and
the note and the values wrap, so the dock never grows the window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_medai._napari.modality import layer_modality
from napari_medai._napari.window_level import (
    install,
    layer_array,
    window_targets,
)
from napari_medai._qt.parts import fit_width
from napari_medai.core.models.fit import describe_modality
from napari_medai.core.windows import PRESETS, WindowPreset, percentile_limits, value_range

if TYPE_CHECKING:
    import napari

NO_IMAGE_MESSAGE = "Select the image layer to apply the window to."
DRAG_TIP = (
    "While on, a left drag on the image sets its window instead of panning: "
    "right/left widens/narrows it, down/up raises/lowers the level. "
    "Ctrl + left drag does this at any time. Not while a Labels tool (brush, fill...) is active."
)


def _preset_tip(preset: WindowPreset) -> str:
    unit = " HU" if preset.modality == "CT" else ""
    return (
        f"{preset.name}: level {preset.level:g}{unit}, width {preset.width:g}{unit} "
        f"(for {describe_modality(preset.modality)})"
    )


class WindowPresetWidget(QWidget):
    """One button per CT window preset, plus "Auto (percentiles)".

    Acts on the selected image layers; when none is selected (say the user is
    painting on a Labels layer) and the viewer holds a single image, on that
    one. The contrast slider is widened to the data's range so the user can
    fine-tune around the preset.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        self.buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        for index, preset in enumerate(PRESETS.values()):
            button = QPushButton(preset.name.capitalize())
            button.setToolTip(_preset_tip(preset))
            button.clicked.connect(lambda _checked=False, name=preset.name: self.apply(name))
            grid.addWidget(button, index // 2, index % 2)
            self.buttons[preset.name] = button
        auto = QPushButton("Auto (percentiles)")
        auto.setToolTip("0.5 to 99.5 percentile of the image's values (any modality)")
        auto.clicked.connect(lambda _checked=False: self.apply_auto())
        self.buttons["auto"] = auto
        self.drag = install(napari_viewer)
        #: The window/level mouse mode: a plain left drag sets the window.
        self.drag_button = QPushButton("Drag to set window/level")
        self.drag_button.setCheckable(True)
        self.drag_button.setToolTip(DRAG_TIP)
        self.drag_button.toggled.connect(self._set_drag_mode)
        self.drag.events.enabled.connect(self._show_drag_mode)
        #: The current window of the images the presets and the drag act on.
        self.values = QLabel("")
        self.values.setWordWrap(True)
        self.values.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        #: Why presets are disabled, when they are.
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        content = QWidget()
        column = QVBoxLayout(content)
        column.addLayout(grid)
        column.addWidget(auto)
        column.addWidget(self.drag_button)
        column.addWidget(self.values)
        column.addWidget(self.note)
        column.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(content)
        fit_width(self.scroll)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll)
        layers = napari_viewer.layers
        layers.selection.events.changed.connect(self._update_presets)
        layers.events.inserted.connect(self._update_presets)
        layers.events.removed.connect(self._update_presets)
        layers.events.connect(self._on_layer_event)
        self._update_presets()

    def target_layers(self) -> list[Image]:
        """The selected greyscale images, else the viewer's only one, else none."""
        return window_targets(self._viewer)

    def _set_drag_mode(self, on: bool) -> None:
        self.drag.enabled = on

    def _show_drag_mode(self, event: Any) -> None:
        self.drag_button.setChecked(event.value)

    def _on_layer_event(self, event: Any) -> None:
        """Show a target's new window whenever its contrast limits change (drag, slider, preset)."""
        if event.type == "contrast_limits":
            self._show_values()

    def _show_values(self) -> None:
        layers = self.target_layers()
        self.values.setText(
            "\n".join(self.drag.describe(layer) for layer in layers)
            or "Window: select an image layer"
        )

    def _mismatch(self, preset: WindowPreset, layers: list[Image]) -> str | None:
        """Why ``preset`` does not suit ``layers``, or None when it does."""
        modalities = {layer.name: layer_modality(layer) for layer in layers}
        others = [name for name, modality in modalities.items() if modality != preset.modality]
        if not others:
            return None
        have = modalities[others[0]]
        kind = describe_modality(have) if have else "not known to be CT (it never reaches air)"
        return (
            f"{preset.name.capitalize()} is a {describe_modality(preset.modality)} window, "
            f"but '{others[0]}' is {kind}: use Auto"
        )

    def _update_presets(self, _event: Any = None) -> None:
        layers = self.target_layers()
        problems = []
        for preset in PRESETS.values():
            problem = self._mismatch(preset, layers)
            button = self.buttons[preset.name]
            button.setEnabled(problem is None)
            button.setToolTip(_preset_tip(preset) if problem is None else problem)
            if problem is not None:
                problems.append(problem)
        self.note.setText(problems[0] if problems else "")
        self._show_values()

    def apply(self, name: str) -> list[Image]:
        """Apply the preset called ``name`` (a key of ``PRESETS``) to the images it suits."""
        preset = PRESETS[name]
        layers = self.target_layers()
        problem = self._mismatch(preset, layers)
        if problem is not None:
            show_warning(problem)
            layers = [layer for layer in layers if layer_modality(layer) == preset.modality]
        limits = preset.contrast_limits
        return self._set_limits(layers, lambda _layer: limits)

    def apply_auto(self) -> list[Image]:
        """Set each target layer's limits to its own 0.5-99.5 percentiles."""
        layers = self.target_layers()
        return self._set_limits(layers, lambda layer: percentile_limits(layer_array(layer)))

    def _set_limits(self, layers: list[Image], limits_for) -> list[Image]:
        if not layers and not self.target_layers():
            show_info(NO_IMAGE_MESSAGE)
        for layer in layers:
            limits = limits_for(layer)
            data_low, data_high = value_range(layer_array(layer))
            current_low, current_high = layer.contrast_limits_range
            layer.contrast_limits_range = (
                min(current_low, data_low, limits[0]),
                max(current_high, data_high, limits[1]),
            )
            layer.contrast_limits = limits
        return layers
