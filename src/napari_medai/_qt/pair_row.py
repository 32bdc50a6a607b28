"""One row of the Train dock: an image and the labels painted on it, as magicgui pickers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, PushButton, create_widget
from napari.layers import Image, Labels

from napari_medai._napari.segmentation import is_segmentable
from napari_medai._qt.parts import narrow

if TYPE_CHECKING:
    import napari


def _is_annotation(layer: Any) -> bool:
    return isinstance(layer, Labels) and layer.ndim == 3


class PairRow(Container):
    """One training pair: an image and the labels painted on it (pickers follow the layers)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image_combo = create_widget(
            annotation=Image,
            name="image",
            options={"nullable": True, "choices": lambda _w: self._layers(is_segmentable)},
        )
        self.labels_combo = create_widget(
            annotation=Labels,
            name="labels",
            options={"nullable": True, "choices": lambda _w: self._layers(_is_annotation)},
        )
        self.image_combo.tooltip = "The scan to train on"
        self.labels_combo.tooltip = (
            "The labels painted on that scan; slices holding a label count as annotated, "
            "every other voxel is ignored"
        )
        self.remove_button = PushButton(text="x", tooltip="Remove this pair")
        self._viewer = viewer
        super().__init__(
            widgets=[self.image_combo, self.labels_combo, self.remove_button],
            layout="horizontal",
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.remove_button.native.setFixedWidth(28)
        for combo in (self.image_combo, self.labels_combo):
            narrow(combo.native, chars=6)
        self._lost: set[str] = set()
        self.reset_choices()

    def _layers(self, accepts: Any) -> list[tuple[str, Any]]:
        viewer = getattr(self, "_viewer", None)
        return [] if viewer is None else [(x.name, x) for x in viewer.layers if accepts(x)]

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers; a renamed layer stays picked, a removed one leaves no pick.

        A picker with nothing picked yet takes the first layer it can; one whose
        layer was removed stays empty, so training never silently switches to
        other labels than the ones the user chose.
        """
        picked = [combo.value for combo in (self.image_combo, self.labels_combo)]
        super().reset_choices()
        for combo, value in zip((self.image_combo, self.labels_combo), picked):
            if value is not None and value in combo.choices:
                combo.value = value
            elif value is not None:
                self._lost.add(combo.name)
            elif combo.name not in self._lost and len(combo.choices) > 1:
                combo.value = combo.choices[1]

    def pair(self) -> tuple[Image, Labels] | None:
        """The picked (image, labels), or None while either is missing."""
        image, labels = self.image_combo.value, self.labels_combo.value
        return None if image is None or labels is None else (image, labels)
