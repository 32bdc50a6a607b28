"""One pair of the Train dock: a scan and the labels painted on it, as magicgui pickers.

Each picker has a row of its own, as wide as the dock, so layer names read in
full. The labels picker starts on the labels the user works on: the selected
Labels layer, else the one painted last, else the newest visible one (not the
first in the list, which is often a reference); until the user picks, it
follows painting into another Labels layer. The Prompt dock's preview is never
offered: it is a proposal, not yet the user's annotation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from magicgui.widgets import Container, PushButton, create_widget
from napari.layers import Image, Labels

from napari_medai._napari.segmentation import is_segmentable
from napari_medai._napari.training import is_annotation_layer

if TYPE_CHECKING:
    import napari


class PairRow(Container):
    """One training pair: a scan and the labels painted on it (pickers follow the layers)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image_combo = create_widget(
            annotation=Image,
            name="image",
            label="Scan",
            options={"nullable": True, "choices": lambda _w: self._layers(is_segmentable)},
        )
        self.labels_combo = create_widget(
            annotation=Labels,
            name="labels",
            label="Labels",
            options={"nullable": True, "choices": lambda _w: self._layers(is_annotation_layer)},
        )
        self.image_combo.tooltip = "The scan to train on"
        self.labels_combo.tooltip = (
            "The labels painted on that scan; slices holding a label count as annotated, "
            "every other voxel is ignored"
        )
        self.remove_button = PushButton(text="Remove this pair")
        self._viewer = viewer
        super().__init__(widgets=[self.image_combo, self.labels_combo, self.remove_button])
        self.margins = (0, 0, 0, 0)
        self._lost: set[str] = set()
        #: The Labels layer painted last (a stroke or a fill), while it is in the viewer.
        self._painted: Labels | None = None
        self._watched: WeakSet[Labels] = WeakSet()
        #: True once the user picked the labels (or added a later pair): no more following.
        self.labels_chosen = False
        self.labels_combo.changed.connect(self._on_labels_chosen)
        self.reset_choices()

    def _layers(self, accepts: Any) -> list[tuple[str, Any]]:
        viewer = getattr(self, "_viewer", None)
        return [] if viewer is None else [(x.name, x) for x in viewer.layers if accepts(x)]

    def _on_labels_chosen(self, _value: Any) -> None:
        self.labels_chosen = True

    def _on_painted(self, layer: Labels) -> None:
        self._painted = layer
        if not self.labels_chosen and "labels" not in self._lost:
            self._pick_labels(layer)

    def _watch_painting(self) -> None:
        """Note which Labels layer the user paints in (each layer connected once)."""
        for layer in self._viewer.layers:
            if is_annotation_layer(layer) and layer not in self._watched:
                self._watched.add(layer)
                layer.events.paint.connect(lambda event, layer=layer: self._on_painted(layer))

    def preferred_labels(self) -> Labels | None:
        """The labels the user works on: selected, else painted last, else newest visible."""
        choices = [layer for layer in self.labels_combo.choices if layer is not None]
        active = self._viewer.layers.selection.active
        if active in choices:
            return active
        if self._painted in choices:
            return self._painted
        visible = [layer for layer in choices if layer.visible]
        return (visible or choices or [None])[-1]

    def _pick_labels(self, layer: Labels | None) -> None:
        """Pick ``layer`` for the user (not a choice of theirs), telling the dock."""
        if layer is not None and layer is not self.labels_combo.value:
            with self.labels_combo.changed.blocked():
                self.labels_combo.value = layer
            self.changed.emit(self)

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers; a renamed layer stays picked, a removed one leaves no pick.

        A scan picker with nothing picked yet takes the first scan, a labels
        picker :meth:`preferred_labels`. A picker whose layer was removed stays
        empty, so training never silently switches to other labels than the
        ones the user chose.
        """
        picked = [combo.value for combo in (self.image_combo, self.labels_combo)]
        with self.labels_combo.changed.blocked():
            super().reset_choices()
        for combo, value in zip((self.image_combo, self.labels_combo), picked):
            if value is not None and value in combo.choices:
                with self.labels_combo.changed.blocked():
                    combo.value = value
            elif value is not None:
                self._lost.add(combo.name)
            elif combo.name in self._lost:
                continue
            elif combo is self.labels_combo:
                self._pick_labels(self.preferred_labels())
            elif combo.choices[1:]:
                combo.value = combo.choices[1]
        self._watch_painting()

    def pair(self) -> tuple[Image, Labels] | None:
        """The picked (image, labels), or None while either is missing."""
        image, labels = self.image_combo.value, self.labels_combo.value
        return None if image is None or labels is None else (image, labels)
