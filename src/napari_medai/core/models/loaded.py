"""A model ready to run, whatever file it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from napari_medai.core.models.card import ModelCard

if TYPE_CHECKING:
    import torch

#: Whole-volume predictor: (1, C, z, y, x) normalised input in model space ->
#: (1, K, z, y, x) class logits or log-probabilities (inference applies softmax).
#: Used instead of sliding-window inference by models with their own two-stage
#: pipeline (e.g. deepbet's crop-then-segment).
VolumePredictor = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass
class LoadedModel:
    """A network plus the card that says how to feed it.

    ``source`` is a registry name or a file path, ``sha256`` the hash of the
    weights file(s) for provenance.
    """

    card: ModelCard
    network: torch.nn.Module
    source: str
    sha256: str
    predict_volume: VolumePredictor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The card's model name."""
        return self.card.name

    def run_provenance(
        self, config: Any, device: str, fallbacks: list[str], when: str
    ) -> dict[str, Any]:
        """What every run of this model records: model, hash, settings, device, time."""
        return {
            "model": self.card.name,
            "source": self.source,
            "sha256": self.sha256,
            "config": asdict(config),
            "device": device,
            "fallbacks": list(fallbacks),
            "time": when,
        }
