"""The Train dock's review of a prediction: Predict, uncertain slices, accept corrections.

Predict runs a model on an image into "<image> – prediction", with the
unpainted axial slices ranked by the model's uncertainty; "Next most uncertain
slice" walks them, most uncertain first; "Accept corrections" copies every
plane edited in the prediction into the annotation layer, "Accept shown slice"
the displayed axial slice as predicted (the rules are :class:`Review`'s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.layers import Image, Labels, Layer
from qtpy.QtWidgets import QLabel

from napari_medai._napari.details import result_rows
from napari_medai._napari.segmentation import segmentation_input
from napari_medai._napari.training import (
    Review,
    displayed_slice,
    go_to_slice,
    predict_job,
    show_prediction,
)
from napari_medai._qt.job_runner import JobRunner
from napari_medai._qt.parts import DetailsView
from napari_medai.core.errors import MedaiError
from napari_medai.core.segmentation.config import SegmentResult

if TYPE_CHECKING:
    import napari


class ReviewPanel(Container):
    """The Predict, "Next most uncertain slice" and two Accept buttons, and what they do.

    Shares the dock's job runner, status line and details view; ``fail``
    reports an error, ``on_finished`` runs when a prediction job ends.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        runner: JobRunner,
        status: QLabel,
        details: DetailsView,
        fail: Callable[[str, Exception], None],
        on_finished: Callable[..., None],
    ) -> None:
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self._viewer = viewer
        self._runner = runner
        self._status = status
        self._details = details
        self._fail = fail
        self._on_finished = on_finished
        #: The prediction being reviewed, once Predict has run.
        self.review: Review | None = None
        self.predict_button = PushButton(text="Predict")
        self.predict_button.tooltip = "Run the last model on the first pair's image"
        self.next_slice_button = PushButton(text="Next most uncertain slice")
        self.accept_button = PushButton(text="Accept corrections")
        self.accept_button.tooltip = "Copy every slice you edited in the prediction into the labels"
        self.accept_slice_button = PushButton(text="Accept shown slice")
        self.accept_slice_button.tooltip = "Copy the displayed axial slice of the prediction as is"
        accept = Container(
            widgets=[self.accept_button, self.accept_slice_button], layout="horizontal"
        )
        accept.margins = (0, 0, 0, 0)
        self.extend([self.predict_button, self.next_slice_button, accept])
        self.next_slice_button.changed.connect(self.next_uncertain_slice)
        self.accept_button.changed.connect(self.accept_corrections)
        self.accept_slice_button.changed.connect(self.accept_shown_slice)

    def predict(self, model: Path, image: Image, annotation: Labels) -> None:
        """Run ``model`` on ``image`` (uncertainty too); unpainted slices of ``annotation``
        are ranked for review."""
        try:
            volume = segmentation_input(image)
        except MedaiError as error:
            self._fail("Predict", error)
            return
        self._status.setText("")
        job = partial(predict_job, model, volume, annotation.data)
        show = partial(self._show_prediction, image, annotation)
        self._runner.start(job, show, on_finished=self._on_finished, title="Predict")

    def _show_prediction(
        self, image: Image, annotation: Labels, outcome: tuple[SegmentResult, list[int]]
    ) -> None:
        result, ranking = outcome
        provenance = {**result.provenance, "image": image.name}
        layer = show_prediction(self._viewer, image, replace(result.labels, metadata=provenance))
        self.review = Review(image, annotation, layer, np.array(layer.data, copy=True), ranking)
        most = f" Most uncertain unpainted slice: {ranking[0]}." if ranking else ""
        self._status.setText(
            f"Prediction in '{layer.name}': correct it, then Accept corrections.{most}"
        )
        self.update_details()

    def next_uncertain_slice(self, _value: Any = None) -> int | None:
        """Jump to the next slice in uncertainty order (wrapping round); return its index."""
        review = self.review
        if review is None or not review.ranking:
            return None
        z = review.ranking[review.next_index % len(review.ranking)]
        review.next_index += 1
        go_to_slice(self._viewer, review.image, z)
        rank = (review.next_index - 1) % len(review.ranking) + 1
        self._status.setText(f"Slice {z}: number {rank} in order of uncertainty")
        return z

    def accept_corrections(self, _value: Any = None) -> dict[str, int]:
        """Copy the planes edited in the prediction layer into the annotation layer."""
        if self.review is None:
            return {}
        try:
            counts = self.review.accept_corrections()
        except MedaiError as error:
            self._fail("Accept corrections", error)
            return {}
        planes = ", ".join(f"{n} along {axis}" for axis, n in counts.items() if n)
        self._status.setText(
            f"Copied edited planes ({planes}) into '{self.review.annotation.name}'"
            if planes
            else "No edits in the prediction layer since it was predicted"
        )
        return counts

    def accept_shown_slice(self, _value: Any = None) -> int | None:
        """Copy the displayed axial slice of the prediction into the annotation layer."""
        review = self.review
        if review is None:
            return None
        z = displayed_slice(self._viewer, review.prediction)
        try:
            review.accept_slice(z)
        except MedaiError as error:
            self._fail("Accept slice", error)
            return None
        self._status.setText(f"Copied slice {z} into '{review.annotation.name}'")
        return z

    def forget(self, layer: Layer) -> None:
        """End the review when one of its layers is removed."""
        if self.review is not None and layer in self.review.layers:
            self.review = None

    def update_details(self, _event: Any = None) -> None:
        """Show how the prediction under review was made, while it is in the viewer."""
        review = self.review
        if review is not None and review.prediction in self._viewer.layers:
            self._details.show_rows(result_rows(review.prediction))

    def update_buttons(self, idle: bool, can_predict: bool) -> None:
        """Enable what can run now; Predict says why it cannot."""
        self.predict_button.enabled = idle and can_predict
        self.predict_button.tooltip = (
            "Run the last model on the first pair's image"
            if can_predict
            else "Train a model first, and pick the image in the first row"
        )
        review = self.review
        self.next_slice_button.enabled = review is not None and bool(review.ranking)
        self.accept_button.enabled = idle and review is not None
        self.accept_slice_button.enabled = idle and review is not None
