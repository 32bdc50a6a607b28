"""Classification as a generator job: one scan, every slice, or boxes; optional Grad-CAM.

Inputs are read, normalised and resized batch by batch (see
:mod:`~napari_medai.core.classification.inputs`), so memory stays at one batch
beyond the scan. Batches are sized from the network's time per input, so that
a call stays short and Cancel lands within about half a second: the first
batch holds one input unless an earlier job timed this model on inputs of
this size. On a GPU out-of-memory error the devices' fallback ladder halves
the batch, then moves to the CPU. A classifier trained on boxes reads every
slice as box-sized windows, and its heat maps cover whole slices (see
:mod:`~napari_medai.core.classification.slice_tiles`).
"""

from __future__ import annotations

import logging
import time
import weakref
from datetime import UTC, datetime

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
from napari_medai.core.classification.slice_tiles import (
    SliceWindows,
    WholeSlices,
    check_window_axis,
    learnt_box,
)
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

#: The batch is sized so that a network call takes about this long, up to a ceiling:
TARGET_CALL_S = 0.25
#: MAX_BATCH inputs, or MAX_BATCH_VOXELS of input when the inputs are small (boxes);
MAX_BATCH = 64
MAX_BATCH_VOXELS = 2**20
#: on the CPU, CPU_BATCH_VOXELS of input (at least one input). Larger CPU batches are
#: no faster per input, soon slower: the bench's DenseNet took 208, 201, 208 and 250 us
#: per 32x32 box in batches of 100, 128, 256 and 512, and 42-45 ms per 512x512 slice in
#: batches of 1-4 but 80 ms in batches of 8 (one thread).
CPU_BATCH_VOXELS = 2**18


class _Paces:
    """Seconds per input of a model's last network call, by device type and input voxels.

    A job's first batch is sized from it rather than from one input timed
    first: a call has a fixed cost (about 2 ms for the bench's DenseNet under
    load, as much as ten 32x32 boxes), and a hundred such boxes then take one
    call instead of two. Kept by the hash of the weights, so that a model
    loaded again (the dock loads it for each run) keeps its pace; by the
    network object when the hash is unknown.
    """

    def __init__(self) -> None:
        self.by_hash: dict[str, dict[tuple[str, int], float]] = {}
        self.by_network: weakref.WeakKeyDictionary[torch.nn.Module, dict] = (
            weakref.WeakKeyDictionary()
        )

    def table(self, model: LoadedModel) -> dict[tuple[str, int], float]:
        """The model's paces, (device type, input voxels) -> seconds per input."""
        if model.sha256:
            return self.by_hash.setdefault(model.sha256, {})
        return self.by_network.setdefault(model.network, {})


_PACES = _Paces()


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
    if config.scope == "slices" and learnt_box(model.card):
        check_window_axis(model.card, config.axis)
    if config.scope == "regions":
        check_regions(regions, volume.spatial_shape)
        if model.card.spatial_dims == 2:
            deep = [n for n, r in enumerate(regions, 1) if r.stop[0] - r.start[0] != 1]
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
        box = learnt_box(model.card)
        if box:
            return SliceWindows(volume, model.card, box)
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


class Batches:
    """Runs batches where the current :class:`Placement` says; grows or shrinks the batch.

    ``inputs`` need only ``read(indices, device)``; held-out evaluation runs
    its ready examples through the same batching and out-of-memory ladder.
    """

    def __init__(
        self, model: LoadedModel, config: ClassifyConfig, device: torch.device, voxels: int
    ) -> None:
        """``voxels``: the size of one input as the network takes it (channels included)."""
        self.model = model
        self.fixed = config.batch_size is not None
        self.voxels = voxels
        pace = _PACES.table(model).get((device.type, voxels))
        first = 1 if pace is None else self._fitting(device, pace)
        self.placement = Placement(device, CPU, config.batch_size or first)
        self.fallbacks: list[str] = []

    def next_indices(self, done: int, count: int) -> list[int]:
        """The next batch after ``done`` of ``count`` inputs.

        Unless the batch size is fixed, a batch takes the rest when the rest is
        at most half a batch more (up to the ceiling) rather than leave a short
        last call, which pays a call's fixed cost for a few inputs.
        """
        size = self.placement.batch
        if not self.fixed and count - done <= min(size + size // 2, self._ceiling()):
            size = count - done
        return list(range(done, min(done + size, count)))

    def run(self, inputs: Inputs, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs on the compute device, class probabilities on the CPU)."""
        compute = self.placement.compute
        batch = inputs.read(indices, compute)
        started = time.perf_counter()
        with torch.no_grad(), autocast(compute):
            logits = self.model.network(batch)
        card = self.model.card
        probabilities = _probabilities(logits, card.num_classes, card.name).to(CPU)
        if not self.fixed:
            self._resize(len(indices), time.perf_counter() - started)
        return batch, probabilities

    def _ceiling(self, device: torch.device | None = None) -> int:
        """The most inputs a batch may hold on ``device`` (default: the current one)."""
        device = device or self.placement.compute
        if device.type == "cpu":
            return max(1, CPU_BATCH_VOXELS // self.voxels)
        return max(MAX_BATCH, MAX_BATCH_VOXELS // self.voxels)

    def _fitting(self, device: torch.device, pace: float) -> int:
        """How many inputs take about TARGET_CALL_S at ``pace`` seconds per input."""
        return min(max(int(TARGET_CALL_S / max(pace, 1e-9)), 1), self._ceiling(device))

    def _resize(self, size: int, elapsed: float) -> None:
        """Size the next batch from this call's time per input, and remember that pace.

        Rather than doubling from one input, which took seven calls for a
        hundred 32x32 boxes.
        """
        compute = self.placement.compute
        pace = elapsed / size
        _PACES.table(self.model)[(compute.type, self.voxels)] = pace
        batch = self._fitting(compute, pace)
        if batch != self.placement.batch:
            self.placement = Placement(compute, CPU, batch)

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
    when = datetime.now(UTC).isoformat(timespec="seconds")
    home = _parameter_device(model.network)
    heat: HeatMaps | None = None
    windows: ContextWindows | None = None
    try:
        yield Progress(0.0, "preparing the scan")
        inputs = _make_inputs(volume, model, config, regions)
        runner = Batches(model, config, device, inputs.voxels)
        cam = np.zeros(volume.spatial_shape, dtype=np.float32) if config.cam else None
        windowed = isinstance(inputs, SliceWindows)
        # With windows, the heat maps come after the verdicts, over whole slices.
        share = 0.5 if windowed and cam is not None else 1.0
        _ready(model.network, home, device)
        rows: list[np.ndarray] = []
        done, network_s = 0, 0.0
        while done < inputs.count:
            indices = runner.next_indices(done, inputs.count)
            mark = time.perf_counter()
            try:
                batch, probabilities = runner.run(inputs, indices)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                yield Progress(share * done / inputs.count, runner.fall_back())
                continue
            network_s += time.perf_counter() - mark
            rows.append(probabilities.numpy())
            if cam is not None and not windowed:
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
            noun = " windows" if windowed else ""
            yield Progress(share * done / inputs.count, f"classified {done}/{inputs.count}{noun}")
        table = np.concatenate(rows)
        if windowed:
            table, background = inputs.verdicts(table)
            if cam is not None:
                slices = WholeSlices(volume, card, inputs.box)
                compute = runner.placement.compute
                heat = yield from _whole_slice_heat(model, config, slices, table, cam, compute)
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
        if windowed:
            provenance["slices_read_as_windows"] = inputs.describe(names[background])
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


def _whole_slice_heat(
    model: LoadedModel,
    config: ClassifyConfig,
    slices: WholeSlices,
    table: np.ndarray,
    cam: np.ndarray,
    device: torch.device,
) -> Job[HeatMaps]:
    """Grad-CAM of each whole axial slice at the boxes' scale, into ``cam`` (see windows.py).

    Each slice's map is for ``config.cam_class``, else for the slice's verdict.
    """
    heat: HeatMaps | None = None
    try:
        for index in range(slices.count):
            batch = slices.read([index], device)
            if heat is None:
                heat = HeatMaps(model.network, batch, config.cam_method, config.cam_layer)
            target = int(table[index].argmax()) if config.cam_class is None else config.cam_class
            slices.place(cam, index, heat(batch, [target])[0].numpy())
            done = index + 1
            message = f"heat map of slice {done}/{slices.count}"
            yield Progress(0.5 + 0.5 * done / slices.count, message)
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise
        raise ClassificationError(
            f"'{model.card.name}' could not read a whole slice at its boxes' scale "
            f"({' x '.join(map(str, slices.patch))} pixels) for the heat map: {error}"
        ) from error
    assert heat is not None  # a volume has at least one slice
    return heat
