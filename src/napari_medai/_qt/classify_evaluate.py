"""The Classify dock's "Evaluate": score a classifier on examples the user picks.

The examples are the dock's own: the boxes with a ``class`` feature, or the
slices labelled by the Labels layer and label values (as Train reads them),
narrowed to the "Held-out slices" typed here (z for boxes, the slice axis for
labelled slices). Train leaves those slices out, so they are truly held out
from the model it makes. The classifier is the dock's Model: the one just
trained, or any picked.
The catalogue's ``EVALUATE_CLASSIFIER`` loads and scores it in the worker,
through the dock's JobRunner (progress, Cancel, errors as notifications); the figures
replace the dock's metrics only when it completes, and say what they were
computed on. No layer is touched.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from magicgui.widgets import LineEdit, PushButton
from napari.utils.notifications import show_error

from napari_medai._napari.classification import held_out_boxes, held_out_slices
from napari_medai._napari.layers import volume_from_layer
from napari_medai._qt.classify_results import figure_text
from napari_medai.core import catalogue
from napari_medai.core.classification.heldout import parse_slices
from napari_medai.core.errors import MedaiError

if TYPE_CHECKING:
    from napari_medai._qt.classify_widget import ClassifyWidget


class Evaluation:
    """The "Held-out slices" field and the Evaluate button of a Classify dock."""

    def __init__(self, dock: ClassifyWidget) -> None:
        self.dock = dock
        self.slices = LineEdit(value="", label="Held-out slices")
        self.slices.tooltip = (
            "e.g. '15-29' or '3, 7-9': Train leaves these slices out, Evaluate scores only "
            "them (blank: all); z for boxes, the slice axis for labelled slices"
        )
        self.button = PushButton(text="Evaluate on the picked examples")
        self.button.changed.connect(self.start)

    @property
    def widgets(self) -> list:
        """The form rows, in order."""
        return [self.slices, self.button]

    def problem(self) -> str | None:
        """Why Evaluate cannot start now, or None."""
        why = self.dock.examples_problem()
        if why is None and self.dock.model_path() is None:
            why = "choose a classifier model, or train one"
        return why

    def update(self) -> None:
        """Enable the button, or say in its tooltip why not."""
        why = self.problem()
        self.button.enabled = why is None
        self.button.tooltip = why or (
            "score the Model on the picked examples (on the held-out slices) and show the figures"
        )

    def start(self, *_args) -> None:
        """Build the picked set from the form and start scoring."""
        if self.problem() is not None:
            return
        dock, image = self.dock, self.dock.image.value
        try:
            slices = parse_slices(self.slices.value)
            volume = volume_from_layer(image)
            if dock.from_labels():
                axis = "zyx".index(dock.axis.value)
                labels, values = dock.labels.value, dock.values.value
                picked = held_out_slices(image, labels, values, axis, slices)
            else:
                layer = dock.box_layer()
                picked = held_out_boxes(image, layer, dock.regions(layer, image), slices)
        except MedaiError as error:
            show_error(f"Evaluate failed: {error}")
            return
        source = dock.model_path()
        dock.status.value = f"evaluating on the picked {picked.kind} of '{picked.source_name}'"
        job = partial(
            catalogue.EVALUATE_CLASSIFIER,
            source,
            dock.trust.value,
            volume,
            picked,
            dock.device.value,
        )
        dock.runner.start(job, partial(self._show, picked.kind), title="Evaluate")

    def _show(self, kind: str, metrics: dict[str, Any]) -> None:
        self.dock.metrics.show_metrics(metrics)
        on = metrics["computed_on"]
        self.dock.status.value = (
            f"Evaluated '{on['model']}' on {on['cases']} picked {kind}: accuracy "
            f"{metrics['accuracy']:.3f}, macro ROC AUC {figure_text(metrics['macro']['roc_auc'])}"
        )
