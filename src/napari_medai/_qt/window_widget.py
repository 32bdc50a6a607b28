"""Dock widget: CT window presets and percentile auto-contrast, one click each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QGridLayout, QPushButton, QVBoxLayout, QWidget

from napari_medai.core.windows import PRESETS, percentile_limits, value_range

if TYPE_CHECKING:
    import napari

NO_IMAGE_MESSAGE = "Select the image layer to apply the window to."


def _is_greyscale(layer: object) -> bool:
    return isinstance(layer, Image) and not layer.rgb


def _layer_array(layer: Image):
    """The array to sample: the coarsest level of a multiscale image."""
    return layer.data[-1] if layer.multiscale else layer.data


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
            button.setToolTip(
                f"{preset.name}: level {preset.level:g} HU, width {preset.width:g} HU"
            )
            button.clicked.connect(lambda _checked=False, name=preset.name: self.apply(name))
            grid.addWidget(button, index // 2, index % 2)
            self.buttons[preset.name] = button
        auto = QPushButton("Auto (percentiles)")
        auto.setToolTip("0.5 to 99.5 percentile of the image's values")
        auto.clicked.connect(lambda _checked=False: self.apply_auto())
        self.buttons["auto"] = auto
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(auto)
        layout.addStretch(1)

    def target_layers(self) -> list[Image]:
        """The selected greyscale images, else the viewer's only one, else none."""
        selected = [layer for layer in self._viewer.layers.selection if _is_greyscale(layer)]
        if selected:
            return selected
        images = [layer for layer in self._viewer.layers if _is_greyscale(layer)]
        return images if len(images) == 1 else []

    def apply(self, name: str) -> list[Image]:
        """Apply the preset called ``name`` (a key of ``PRESETS``); return the layers changed."""
        limits = PRESETS[name].contrast_limits
        return self._set_limits(lambda _layer: limits)

    def apply_auto(self) -> list[Image]:
        """Set each target layer's limits to its own 0.5-99.5 percentiles."""
        return self._set_limits(lambda layer: percentile_limits(_layer_array(layer)))

    def _set_limits(self, limits_for) -> list[Image]:
        layers = self.target_layers()
        if not layers:
            show_info(NO_IMAGE_MESSAGE)
        for layer in layers:
            limits = limits_for(layer)
            data_low, data_high = value_range(_layer_array(layer))
            current_low, current_high = layer.contrast_limits_range
            layer.contrast_limits_range = (
                min(current_low, data_low, limits[0]),
                max(current_high, data_high, limits[1]),
            )
            layer.contrast_limits = limits
        return layers
