"""Train a segmentation model on what the user annotated, as a generator job.

:func:`train_job` yields a :class:`Progress` after every optimizer step (a
fraction of a second), with the loss and, every few seconds, the validation
Dice in its payload (``None`` payloads mark progress during validation).
Stopping the iteration (``close()``) writes the last model and keeps the best
one validated so far (the current one if none was validated yet), so nothing
learnt is lost. At the end of the budget the final weights are validated once
more before that. Budgets, threads and cadences are ``core.training.loop``'s.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (see below)
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.utils import set_determinism

from napari_medai.core.devices import autocast, choose_device
from napari_medai.core.distributed import ddp
from napari_medai.core.errors import MedaiError, ModelLoadError
from napari_medai.core.files import check_can_write
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.models.card import CARD_FILE, ModelCard, refuse_non_segmentation
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import load_model_package, save_model_package
from napari_medai.core.models.preprocessing import check_image_values
from napari_medai.core.models.sources import load_model
from napari_medai.core.training.annotations import choose_dimensionality, declared_slices
from napari_medai.core.training.checkpoints import (
    LAST,
    load_optimizer_state,
    read_state,
    save_checkpoint,
)
from napari_medai.core.training.config import (
    BUDGET_CLOCKS,
    DIMENSIONALITIES,
    TrainConfig,
    TrainResult,
    check_training_pairs,
)
from napari_medai.core.training.dataset import (
    Augmenter,
    PatchSampler,
    TrainingData,
    choose_intensity,
    prepare_pairs,
)
from napari_medai.core.training.loop import Schedule, Steps, library_versions, run_training
from napari_medai.core.training.loss import MaskedDiceCELoss
from napari_medai.core.training.quality import dice_text, measured_on
from napari_medai.core.training.synthetic import SyntheticMixer
from napari_medai.core.volume import LabelMap, Volume

# torch imports its compiler (torch._dynamo, seconds) the first time an optimizer
# is built; the import above pays that when this module loads, not from the
# user's training-time budget.

#: Patch edges are multiples of this (the UNet halves the size three times).
PATCH_MULTIPLE = 16
#: Largest default patch: whole slices up to 192 pixels for slice models, and
#: (z, y, x) blocks for 3D models, sized so one CPU step stays well under a second.
SLICE_PATCH_MAX = 192
VOLUME_PATCH_MAX = (32, 96, 96)
#: A small MONAI UNet: fast enough on a laptop CPU to learn an organ in seconds.
UNET_ARGS = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 0}
#: Default patches per step, for slice and 3D models alike. Small batches learn
#: more per CPU second: the liver from 3 painted slices (bench/train_sparse.py,
#: 5 CPU-s on one thread, seeds 0-2) scored a mean Dice of 0.898 (CT) / 0.926
#: (MR) with 8 slice patches, 0.911 / 0.937 with 4, 0.923 / 0.938 with 2 and
#: 0.910 (CT) with 1.
DEFAULT_BATCH = 2
VALIDATION_OVERLAP = 0.25


def train_job(pairs: list[tuple[Volume, LabelMap]], config: TrainConfig) -> Job[TrainResult]:
    """Train on ``pairs`` (each image with labels painted on its grid) as a job.

    Checks the configuration, the outputs and the device at once (raising
    :class:`MedaiError`), so the caller learns about a bad choice before any
    work starts. The label arrays are only read.
    """
    _check_config(config)
    check_training_pairs(pairs, config.unlabelled_value)
    _check_images(pairs)
    if not config.resume:
        check_can_write(Path(config.out_dir), config.overwrite)
        check_can_write(config.checkpoints, config.overwrite)
    device = choose_device(config.device)
    return _train(list(pairs), config, device)


def _check_images(pairs: list[tuple[Volume, LabelMap]]) -> None:
    """Refuse unusable images (complex, NaN)."""
    for number, (image, _labels) in enumerate(pairs, start=1):
        name = image.metadata.get("name") or f"image {number}"
        check_image_values(image.array, f'the training image "{name}"')


def _check_config(config: TrainConfig) -> None:
    if config.dimensionality not in DIMENSIONALITIES:
        raise MedaiError(
            f"unknown dimensionality {config.dimensionality!r}; "
            f"choose one of {', '.join(DIMENSIONALITIES)}"
        )
    if config.max_time_s is not None and config.max_time_s <= 0:
        raise MedaiError(f"the time budget must be positive, not {config.max_time_s} s")
    if config.max_iters is not None and config.max_iters < 1:
        raise MedaiError(f"the iteration budget must be at least 1, not {config.max_iters}")
    if config.budget_clock not in BUDGET_CLOCKS:
        raise MedaiError(
            f"the time budget counts {' or '.join(BUDGET_CLOCKS)} seconds, "
            f"not {config.budget_clock!r}"
        )
    if not 0.0 <= config.validation_fraction < 1.0:
        raise MedaiError(
            f"the validation fraction must be at least 0 and below 1, "
            f"not {config.validation_fraction}"
        )
    if config.num_threads is not None and config.num_threads < 1:
        raise MedaiError(f"training needs at least 1 thread, not {config.num_threads}")
    if config.batch_size is not None and config.batch_size < 1:
        raise MedaiError(f"the batch size must be at least 1, not {config.batch_size}")
    if config.learning_rate <= 0:
        raise MedaiError(f"the learning rate must be positive, not {config.learning_rate}")
    if config.resume and config.init is not None:
        raise MedaiError("resume continues the last checkpoint; do not also give a start model")
    if config.patch_size is not None and (
        len(config.patch_size) != 3
        or any(int(n) < 1 for n in config.patch_size)
        or any(int(n) % PATCH_MULTIPLE for n in config.patch_size[1:])
    ):
        raise MedaiError(
            f"the patch size {config.patch_size} must be three numbers (z, y, x) with y and x "
            f"multiples of {PATCH_MULTIPLE} (and z too for 3D models)"
        )
    if config.context_slices < 0:
        raise MedaiError(f"context slices must be 0 or more, not {config.context_slices}")


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _default_patch(shapes: list[tuple[int, ...]], slice_model: bool) -> list[int]:
    largest = np.max(np.array(shapes), axis=0)
    if slice_model:
        return [1, *(min(_round_up(n, PATCH_MULTIPLE), SLICE_PATCH_MAX) for n in largest[1:])]
    return [min(_round_up(n, PATCH_MULTIPLE), cap) for n, cap in zip(largest, VOLUME_PATCH_MAX)]


def _choose_kind(pairs: list[tuple[Volume, LabelMap]], config: TrainConfig) -> tuple[str, str]:
    if config.dimensionality != "auto":
        return config.dimensionality, "chosen by the user"
    choices = [
        choose_dimensionality(
            labels.array, config.unlabelled_value, config.dense, declared_slices(labels)
        )
        for _, labels in pairs
    ]
    chosen = next((c for c in choices if c.kind == "3d"), choices[0])
    return chosen.kind, chosen.reason


def _kind_of(card: ModelCard) -> str:
    if card.spatial_dims == 3:
        return "3d"
    return "2.5d" if card.context_slices else "2d"


def _new_card(
    pairs: list[tuple[Volume, LabelMap]],
    config: TrainConfig,
    kind: str,
    classes: list[int],
    intensity: dict[str, Any],
) -> ModelCard:
    slice_model = kind != "3d"
    context = config.context_slices if kind == "2.5d" else 0
    patch = list(
        config.patch_size or _default_patch([v.spatial_shape for v, _ in pairs], slice_model)
    )
    if slice_model:
        patch[0] = 1
    elif patch[0] % PATCH_MULTIPLE:
        raise MedaiError(f"a 3D model's patch depth must be a multiple of {PATCH_MULTIPLE}")
    return ModelCard(
        name=config.name or "",
        architecture="UNet",
        architecture_args=copy.deepcopy(UNET_ARGS),
        label_names={0: "background", **{c: f"label {c}" for c in classes}},
        patch_size=patch,
        spatial_dims=2 if slice_model else 3,
        in_channels=2 * context + 1,
        context_slices=context,
        intensity=intensity,
        modality=pairs[0][0].modality or None,
    )


def _shared_modality(pairs: list[tuple[Volume, LabelMap]]) -> str | None:
    """The modality every training scan shares, or None (unknown or mixed): a model
    fine-tuned on CT is a CT model, whatever its start model was made for."""
    found = {image.modality or None for image, _ in pairs}
    return found.pop() if len(found) == 1 else None


def _init_model(init: LoadedModel | str | Path) -> tuple[ModelCard, torch.nn.Module, dict]:
    """A trainable copy of the start model (the caller's model is left as it was)."""
    if not isinstance(init, LoadedModel):
        init = load_model(init)
    card = init.card
    refuse_non_segmentation(card, "be fine-tuned for segmentation")
    if card.spacing is not None or card.orientation is not None:
        raise MedaiError(
            f"the model '{card.name}' runs at a fixed spacing or orientation; fine-tuning "
            "such models is not supported yet (start from scratch or from a model trained here)"
        )
    try:
        network = build_network(card)
        network.load_state_dict(init.network.state_dict())
    except (ModelLoadError, RuntimeError) as error:
        raise MedaiError(
            f"the model '{card.name}' cannot be fine-tuned: napari-medai can only train "
            "the architectures a model card names (MONAI UNet, BasicUNet, SegResNet, ...)"
        ) from error
    return card, network, {"name": card.name, "source": str(init.source), "sha256": init.sha256}


def _check_classes(card: ModelCard, classes: list[int]) -> None:
    unknown = [c for c in classes if c >= card.num_classes]
    if unknown:
        raise MedaiError(
            f"the model '{card.name}' predicts labels 0..{card.num_classes - 1}, but the "
            f"annotations use {unknown}; start a new model to learn new labels"
        )


class _Session(Steps):
    """Everything one training run needs; the training loop drives it."""

    def __init__(
        self, pairs: list[tuple[Volume, LabelMap]], config: TrainConfig, device: torch.device
    ) -> None:
        self.config = config
        self.dist = ddp.from_environment()
        self.is_main = self.dist.is_main
        self.device = device = ddp.start(self.dist, device)
        self.history: list[dict[str, Any]] = []
        self.best_val_dice, self.best_iteration, self.best_saved = -1.0, 0, False
        self.init_info: dict[str, Any] | None = None
        rng = np.random.default_rng(config.seed)
        if config.seed is not None:
            set_determinism(seed=config.seed)
        optimizer_state = None
        if config.resume:
            saved = read_state(config.checkpoints)
            card, network = load_model_package(config.checkpoints / LAST)
            self.iteration, self.elapsed_s = int(saved["iteration"]), float(saved["elapsed_s"])
            self.history = list(saved["history"])
            self.best_val_dice = float(saved["best_val_dice"])
            self.best_iteration = int(saved["best_iteration"])
            self.best_saved = Path(config.out_dir).is_dir()
            self.init_info = saved.get("init")
            optimizer_state = load_optimizer_state(config.checkpoints, saved)
            self.reason = "resumed"
        elif config.init is not None:
            card, network, self.init_info = _init_model(config.init)
            self.reason = "fine-tuning"
        else:
            kind, self.reason = _choose_kind(pairs, config)
            card, network = None, None
        intensity = (
            card.intensity if card is not None else choose_intensity(pairs, config.unlabelled_value)
        )
        self.data: TrainingData = prepare_pairs(
            pairs,
            intensity,
            config.validation_fraction,
            rng,
            config.unlabelled_value,
            config.dense,
        )
        if card is None:
            card = _new_card(pairs, config, kind, self.data.classes, intensity)
            network = build_network(card)
        else:
            if config.dimensionality not in ("auto", _kind_of(card)):
                raise MedaiError(
                    f"the model '{card.name}' is a {_kind_of(card)} model; "
                    f"it cannot continue as {config.dimensionality}"
                )
            _check_classes(card, self.data.classes)
        names = {**card.label_names, **self.data.label_names}
        default_name = " + ".join(names[c] for c in self.data.classes)
        self.card = replace(
            card,
            label_names=names,
            name=config.name or card.name or f"{default_name} ({_kind_of(card)})",
            modality=_shared_modality(pairs) or card.modality,
        )
        self.kind = _kind_of(self.card)
        self.opening = f"training a {self.kind} model ({self.reason}); " + _validation_plan(
            self.data, config.validation_fraction
        )
        self.network = network.to(device).train()
        self.trained = ddp.wrap(self.network, self.dist)
        seed = config.seed if config.seed is not None else int(rng.integers(2**31))
        self.sampler = PatchSampler(
            self.data,
            tuple(self.card.patch_size),
            self.card.spatial_dims,
            self.card.context_slices,
            rng,
        )
        self.augment = Augmenter(
            self.card.spatial_dims, seed + self.dist.rank, strengths=config.augmentation
        )
        self.synthetic = _mixer(config, self.card, self.data.classes, rng)
        self.loss = MaskedDiceCELoss(self.data.classes)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        self.batch_size = config.batch_size or DEFAULT_BATCH

    def step(self, fraction: float) -> dict[str, Any]:
        """One optimizer step on an augmented batch; its loss."""
        batch = self.sampler.batch(self.batch_size * self.dist.world_size)
        batch = ddp.shard(batch, self.dist)
        if self.synthetic is not None:
            count = self.synthetic.count(len(batch[0]))
            mixed = self.synthetic.batch(count)
            batch = tuple(torch.cat([a[count:], b]) for a, b in zip(batch, mixed))
        image, target, mask = self.augment(*batch) if self.config.augment else batch
        image, target, mask = (t.to(self.device) for t in (image, target, mask))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            logits = self.trained(image)
        loss = ddp.global_loss(self.loss, logits.float(), target, mask, self.dist)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return {"loss": float(loss.detach())}

    def message(self, entry: dict[str, Any]) -> str:
        message = f"iteration {entry['iteration']}: loss {entry['loss']:.3f}"
        if "val_dice" in entry:
            message += f", {dice_text(entry['val_dice'], entry['val_held_out'])}"
        return message

    def agree(self, go_on: bool) -> bool:
        return ddp.agree(go_on, self.dist)

    def _predict_slice(self, image: np.ndarray, z: int) -> np.ndarray:
        """Labels of axial slice ``z`` predicted as inference would (sliding windows)."""
        card = self.card
        if card.spatial_dims == 2:
            c = card.context_slices
            zs = np.clip(np.arange(z - c, z + c + 1), 0, len(image) - 1)
            batch, roi, pick = image[zs][None], card.patch_size[1:], None
        else:
            depth = min(card.patch_size[0], len(image))
            start = int(np.clip(z - depth // 2, 0, len(image) - depth))
            batch, roi, pick = image[None, None, start : start + depth], card.patch_size, z - start
        with torch.no_grad(), autocast(self.device):
            logits = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(batch)).to(self.device),
                roi,
                4,
                self.network,
                overlap=VALIDATION_OVERLAP,
                mode="gaussian",
            )
        labels = logits.float().argmax(dim=1)[0]
        return (labels if pick is None else labels[pick]).cpu().numpy()

    def validate(self, fraction: float) -> Job[dict[str, Any]]:
        """Dice over the validation voxels (all slices pooled), mean over the trained classes.

        The validation slices are painted slices held out from training when the
        user painted enough (``val_held_out``), else the painted slices trained on.

        Keeps the weights as the best model if they validate at least as well.
        Yields after every slice, so a stop request is seen within a slice's
        inference even when validation is long (3D models).
        """
        self.network.eval()
        predicted, truth = [], []
        try:
            for pair in self.data.pairs:
                for z in pair.val_slices:
                    mask = pair.val_mask[z]
                    predicted.append(self._predict_slice(pair.image, z)[mask])
                    truth.append(pair.target[z][mask])
                    yield Progress(fraction, "validating")
        finally:
            self.network.train()
        predicted_all, truth_all = np.concatenate(predicted), np.concatenate(truth)
        classes = self.data.classes
        as_one_hot = lambda values: torch.from_numpy(  # noqa: E731
            np.stack([values == c for c in classes])[None, :, :, None].astype(np.float32)
        )
        # The functional form: DiceMetric would all-gather across DDP ranks, but rank 0
        # validates alone.
        dice = compute_dice(as_one_hot(predicted_all), as_one_hot(truth_all), ignore_empty=False)
        val_dice = float(dice.mean().item())
        self.consider(val_dice)
        return {
            "val_dice": val_dice,
            "val_held_out": self.data.held_out,
            "val_slices": self.validation_slices,
        }

    @property
    def validation_slices(self) -> int:
        """How many painted slices validation scores (held out, or fit on)."""
        return sum(len(pair.val_slices) for pair in self.data.pairs)

    def card_now(self, val_dice: float | None) -> ModelCard:
        """The card with the training facts as of now (no patient identifiers)."""
        info = {
            "trained_with": "napari-medai",
            "dimensionality": self.kind,
            "why": self.reason,
            "iterations": self.iteration,
            "training_time_s": round(self.elapsed_s, 2),
            "val_dice": None if val_dice is None else round(val_dice, 4),
            "val_held_out": self.data.held_out,
            "val_slices": self.validation_slices,
            "val_measured_on": measured_on(self.data.held_out, self.validation_slices),
            "batch_size": self.batch_size,
            "budget_clock": self.config.budget_clock,
            "threads": torch.get_num_threads(),
            "learning_rate": self.config.learning_rate,
            "seed": self.config.seed,
            "loss": "masked cross-entropy + masked soft Dice (unannotated voxels ignored)",
            "optimizer": "AdamW",
            "augmentation": "affine (in-plane rotation, scale, shift), intensity scale/shift/noise",
            "augmentation_strengths": self.config.augmentation.to_dict(),
            "init": self.init_info,
            "data": [pair.description for pair in self.data.pairs],
            "synthetic": None if self.synthetic is None else self.synthetic.describe(),
            "versions": library_versions(),
        }
        return replace(self.card, training=info)

    def save_best(self, val_dice: float | None) -> None:
        card = self.card_now(val_dice)
        save_model_package(Path(self.config.out_dir), card, self.network, overwrite=True)
        self.best_saved = True

    def save_last(self) -> Path:
        saved = {
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "best_val_dice": self.best_val_dice,
            "best_iteration": self.best_iteration,
            "init": self.init_info,
        }
        last_dice = next((h["val_dice"] for h in reversed(self.history) if "val_dice" in h), None)
        return save_checkpoint(
            self.config.checkpoints, self.card_now(last_dice), self.network, self.optimizer, saved
        )

    def consider(self, val_dice: float) -> None:
        """Keep the current weights as the best model if they validate at least as well."""
        if val_dice >= self.best_val_dice:
            self.best_val_dice = val_dice
            self.best_iteration = self.iteration
            self.save_best(val_dice)

    def finish(self, finished: bool) -> None:
        """Write the last model, and the current one as best if none was kept yet.

        Runs on completion, on stop and on error; it does no validation, so a stop
        request is honoured at once (the best model is the best one validated).
        """
        if self.is_main:
            if not self.best_saved:
                self.save_best(None)
            self.save_last()
        ddp.stop(self.dist, wait=finished)


def _validation_plan(data: TrainingData, fraction: float) -> str:
    """What the Dice shown while training is measured on, said once at the start."""
    if data.held_out:
        slices = sum(len(pair.val_slices) for pair in data.pairs)
        return f"validating on {measured_on(True, slices)}"
    # prepare_pairs holds out floor(fraction * n) slices when that leaves one to train on.
    needed = f" (paint {math.ceil(1 / fraction)} or more to validate)" if fraction > 0 else ""
    return f"the Dice shown is the fit on the painted slices: too few to hold any back{needed}"


def _mixer(
    config: TrainConfig, card: ModelCard, classes: list[int], rng: np.random.Generator
) -> SyntheticMixer | None:
    """The synthetic-pair mixer when asked for; 2D pairs only fit slice models."""
    if config.synthetic is None or not config.synthetic_ratio:
        return None
    if card.spatial_dims != 2:
        raise MedaiError(
            "synthetic pairs are 2D slices; they mix into 2D or 2.5D training only, not 3D"
        )
    patch = (card.patch_size[1], card.patch_size[2])
    return SyntheticMixer(
        config.synthetic,
        config.synthetic_ratio,
        card.intensity,
        patch,
        card.in_channels,
        classes,
        rng,
    )


def _train(
    pairs: list[tuple[Volume, LabelMap]], config: TrainConfig, device: torch.device
) -> Job[TrainResult]:
    schedule = Schedule(
        config.max_iters,
        config.max_time_s,
        config.validation_every_s,
        config.checkpoint_every_s,
        config.num_threads,
        now=BUDGET_CLOCKS[config.budget_clock],
        # Validation takes at most a fifth of the time, however slow it is (3D).
        validation_share=0.2,
    )
    session = yield from run_training(
        lambda: _Session(pairs, config, device), schedule, "preparing the annotations"
    )
    return TrainResult(
        best_path=Path(config.out_dir),
        last_path=config.checkpoints / LAST,
        history=list(session.history),
        card=ModelCard.read(Path(config.out_dir) / CARD_FILE),
    )
