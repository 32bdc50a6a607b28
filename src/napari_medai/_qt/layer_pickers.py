"""Layer pickers the docks share: magicgui ``choices`` over napari's layer list.

magicgui's own pickers refresh by themselves only in docks napari built; these
also follow the list for the docks' defaults and disabled-button reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox
from napari.components import LayerList
from napari.layers import Image, Labels, Layer

from napari_medai._qt.parts import narrow


def layers_of(layers: LayerList, kind: type[Layer]) -> Callable[[Any], list[Layer]]:
    """A magicgui ``choices`` callable: the layers of ``kind`` in the list."""
    return lambda _widget=None: [layer for layer in layers if isinstance(layer, kind)]


def follow_layer_list(layers: LayerList, callback: Callable[..., Any]) -> None:
    """Call ``callback`` whenever a layer is added, removed or moved.

    magicgui's pickers refresh by themselves only in docks napari built; the
    docks here also update defaults and the reason a button is disabled.
    """
    for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
        event.connect(callback)


def scan_pickers(layers: LayerList) -> tuple[ComboBox, ComboBox]:
    """A "Labels" picker and an optional "Scan" picker (the image they were drawn on)."""
    labels = ComboBox(label="Labels", annotation=Labels, choices=layers_of(layers, Labels))
    scan = ComboBox(label="Scan", annotation=Image, choices=layers_of(layers, Image), nullable=True)
    for picker in (labels, scan):  # a long layer name must not widen the dock
        narrow(picker.native)
    return labels, scan


def refresh_scan_pickers(labels_combo: Any, image_combo: Any) -> None:
    """Re-list a Labels and a scan picker; pick the first scan when none is picked."""
    labels_combo.reset_choices()
    image_combo.reset_choices()
    scans = [choice for choice in image_combo.choices if choice is not None]
    if image_combo.value is None and scans:
        image_combo.value = scans[0]
