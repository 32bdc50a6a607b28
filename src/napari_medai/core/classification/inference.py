"""Classification as a generator job: one scan, every slice, or boxes; optional Grad-CAM.

Inputs are read, normalised and resized batch by batch (see
:mod:`~napari_medai.core.classification.inputs`), so memory stays at one batch
beyond the scan. The batch grows while a network call stays short, so Cancel
lands within about half a second; on a GPU out-of-memory error the devices'
fallback ladder halves the batch, then moves to the CPU.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import numpy as np
import torch

from napari_medai.core.classification.cam import HeatMaps
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifyConfig,
    ClassifyResult,
    Prediction,
    Region,
    check_regions,
)
from napari_medai.core.classification.context import ContextWindows
from napari_medai.core.classification.inputs import (
    Inputs,
    RegionInputs,
    SliceInputs,
    VolumeInput,
)
from napari_medai.core.classification.model import check_classifier, class_names
from napari_medai.core.devices import (
    CPU,
    Placement,
    autocast,
    choose_device,
    is_out_of_memory,
    next_fallback,
    release_memory,
)
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.volume import Volume

logger = logging.getLogger(__name__)

#: The batch doubles while a network call takes less than this, up to MAX_BATCH.
TARGET_CALL_S = 0.25
MAX_BATCH = 64


def classify_job(
    volume: Volume,
    model: LoadedModel,
    config: ClassifyConfig,
    regions: list[Region] | None = None,
) -> Job[ClassifyResult]:
    """Classify ``volume`` (or its slices, or ``regions``) with ``model``, as a job.

    Checks the settings, the model and the boxes at once, raising
    :class:`ClassificationError` before any work starts.
    """
    config.check()
    check_classifier(model, volume, config.scope)
    regions = list(regions or [])
    if config.scope == "regions":
        check_regions(regions, volume.spatial_shape)
        if model.card.spatial_dims == 2:
            deep = [n for n, r in enumerate(regions, 1) if r.size[0] != 1]
            if deep:
                raise ClassificationError(
                    f"'{model.card.name}' is a 2D classifier, but box {deep[0]} spans several "
                    "slices; draw 2D boxes on one slice"
                )
    if config.cam_class is not None and not 0 <= config.cam_class < model.card.num_classes:
        raise ClassificationError(
            f"the CAM class {config.cam_class} is not one of the model's classes "
            f"0..{model.card.num_classes - 1}"
        )
    device = choose_device(config.device)
    return _classify(volume, model, config, regions, device)


def _make_inputs(volume: Volume, model: LoadedModel, config: ClassifyConfig, regions):
    if config.scope == "volume":
        return VolumeInput(volume, model.card)
    if config.scope == "slices":
        return SliceInputs(volume, model.card, config.axis)
    return RegionInputs(volume, model.card, regions)


def _probabilities(logits: torch.Tensor, classes: int, name: str) -> torch.Tensor:
    logits = logits.float()
    if logits.ndim != 2:
        raise ClassificationError(
            f"the model '{name}' gave an output of shape {tuple(logits.shape)}, not one score "
            "per class; is it a segmentation network?"
        )
    if logits.shape[1] == 1 and classes == 2:
        positive = torch.sigmoid(logits)
        return torch.cat([1.0 - positive, positive], dim=1)
    if logits.shape[1] != classes:
        raise ClassificationError(
            f"the model '{name}' gave {logits.shape[1]} scores but its card names {classes} classes"
        )
    return torch.softmax(logits, dim=1)


class _Batches:
    """Runs batches where the current :class:`Placement` says; grows or shrinks the batch."""

    def __init__(self, model: LoadedModel, config: ClassifyConfig, device: torch.device) -> None:
        self.model = model
        self.fixed = config.batch_size is not None
        self.placement = Placement(device, CPU, config.batch_size or 1)
        self.fallbacks: list[str] = []

    def run(self, inputs: Inputs, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs on the compute device, class probabilities on the CPU)."""
        compute = self.placement.compute
        batch = inputs.read(indices, compute)
        started = time.perf_counter()
        with torch.no_grad(), autocast(compute):
            logits = self.model.network(batch)
        card = self.model.card
        probabilities = _probabilities(logits, card.num_classes, card.name).to(CPU)
        if not self.fixed and time.perf_counter() - started < TARGET_CALL_S:
            self.placement = Placement(compute, CPU, min(2 * self.placement.batch, MAX_BATCH))
        return batch, probabilities

    def fall_back(self) -> str:
        step = next_fallback(self.placement)
        if step is None:
            raise ClassificationError(
                f"not enough memory to run '{self.model.card.name}' even one input at a time on "
                "the CPU; close other programs or use a smaller model"
            )
        previous, (self.placement, message) = self.placement, step
        if previous.compute != self.placement.compute:
            self.model.network.to(self.placement.compute)
        release_memory(previous.compute)
        self.fallbacks.append(message)
        logger.warning(message)
        return message


def _parameter_device(network: torch.nn.Module) -> torch.device:
    parameter = next(iter(network.parameters()), None)
    return parameter.device if parameter is not None else CPU


def _ready(network: torch.nn.Module, home: torch.device, device: torch.device) -> None:
    """Put ``network`` in eval mode on ``device``, skipping what is already so.

    ``eval()`` and ``to()`` walk every module and parameter even when nothing
    changes; for a DenseNet that is milliseconds per call, which small jobs
    (a few boxes) feel.
    """
    if any(module.training for module in network.modules()):
        network.eval()
    if home != device:
        network.to(device)


def _classify(
    volume: Volume,
    model: LoadedModel,
    config: ClassifyConfig,
    regions: list[Region],
    device: torch.device,
) -> Job[ClassifyResult]:
    card = model.card
    names = class_names(card)
    started = time.perf_counter()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    home = _parameter_device(model.network)
    runner = _Batches(model, config, device)
    heat: HeatMaps | None = None
    windows: ContextWindows | None = None
    try:
        yield Progress(0.0, "preparing the scan")
        inputs = _make_inputs(volume, model, config, regions)
        cam = np.zeros(volume.spatial_shape, dtype=np.float32) if config.cam else None
        _ready(model.network, home, device)
        rows: list[np.ndarray] = []
        done, network_s = 0, 0.0
        while done < inputs.count:
            indices = list(range(done, min(done + runner.placement.batch, inputs.count)))
            mark = time.perf_counter()
            try:
                batch, probabilities = runner.run(inputs, indices)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                yield Progress(done / inputs.count, runner.fall_back())
                continue
            network_s += time.perf_counter() - mark
            rows.append(probabilities.numpy())
            if cam is not None:
                if heat is None:
                    heat = HeatMaps(model.network, batch[:1], config.cam_method, config.cam_layer)
                winners = probabilities.argmax(1).tolist()
                targets = [config.cam_class if config.cam_class is not None else w for w in winners]
                if isinstance(inputs, RegionInputs) and config.cam_context:
                    windows = windows or ContextWindows(volume, inputs, config.cam_context)
                    maps = windows.heat(heat, indices, targets, runner.placement.compute)
                else:
                    maps = list(heat(batch, targets).numpy())
                for index, heat_map in zip(indices, maps):
                    inputs.place(cam, index, heat_map)
            done += len(indices)
            yield Progress(done / inputs.count, f"classified {done}/{inputs.count}")
        table = np.concatenate(rows)
        winners = table.argmax(1)
        predictions = [
            Prediction(i, label, names[label], row[label], row)
            for i, (label, row) in enumerate(zip(winners.tolist(), table.tolist()))
        ]
        provenance = {
            **model.run_provenance(config, str(runner.placement.compute), runner.fallbacks, when),
            "inputs": inputs.count,
            "durations": {
                "network_and_reading": round(network_s, 3),
                "total": round(time.perf_counter() - started, 3),
            },
            "normalisation": {**card.intensity, "statistics": inputs.normaliser.describe()},
        }
        if heat is not None:
            provenance["cam"] = {"method": config.cam_method, "layer": heat.layer}
            if windows is not None:
                provenance["cam"]["context_pixels"] = config.cam_context
        if isinstance(inputs, VolumeInput):
            provenance["model_space"] = inputs.space.describe()
        name = f"{volume.metadata.get('name', 'image')} ({card.name}) CAM"
        cam_volume = None if cam is None else Volume(cam, volume.geometry, {"name": name})
        yield Progress(1.0, "done")
        return ClassifyResult(
            config.scope, predictions, names, cam_volume, regions, config.axis, provenance
        )
    finally:
        if heat is not None:
            heat.close()
        if _parameter_device(model.network) != home:
            model.network.to(home)
        release_memory(device)
