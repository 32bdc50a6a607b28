"""Train a classifier on the user's examples, as a generator job.

The steps of ``core.training.loop``'s one training loop, as segmentation's: the
job yields after every optimizer step with the loss (and, every few seconds,
the held-out figures) in its payload; stopping runs ``finally``, which keeps
the model as a model package and writes the last one with the optimizer
state, from which ``resume`` continues. The kept model is the one with the
best held-out macro ROC AUC; when the held-out examples lack a class, no
held-out figure can judge the model and the last weights are kept. The card
and the result say which (``kept``). Batches are drawn class-balanced and
augmented (``core.training.dataset.Augmenter``). The settings are
:class:`~napari_medai.core.classification.config.ClassifierTrainConfig`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from napari_medai.core.classification.config import (
    DEFAULT_ARCHITECTURE,
    DEFAULT_ARGS,
    ClassificationError,
    ClassifierTrainConfig,
    default_model_name,
)
from napari_medai.core.classification.examples import Examples
from napari_medai.core.classification.metrics import classification_metrics, spatial_split
from napari_medai.core.classification.model import TASK
from napari_medai.core.devices import autocast, choose_device
from napari_medai.core.files import check_can_write
from napari_medai.core.jobs import Job
from napari_medai.core.models.card import CARD_FILE, ModelCard
from napari_medai.core.models.networks import CLASSIFIERS, build_network
from napari_medai.core.models.package import load_model_package, save_model_package
from napari_medai.core.training.checkpoints import (
    LAST,
    load_optimizer_state,
    read_state,
    save_checkpoint,
)
from napari_medai.core.training.dataset import Augmenter
from napari_medai.core.training.loop import Schedule, Steps, library_versions, run_training
from napari_medai.core.training.strengths import AugmentStrengths

#: Intensity augmentation on a fixed window of calibrated units (CT's HU): a quarter of
#: the default range. At full strength the random shift reaches 0.1 of the window,
#: 40 HU on the default -160..240, more than the 10-30 HU between liver and spleen that
#: a classifier must read; a quarter is about the spread between scanners. On
#: bench/classify.py's organ boxes (seeds 0-3) macro ROC AUC 0.907, 0.935, 0.878, 0.913
#: (mean 0.908) against 0.876-0.917, 0.895-0.903, 0.826-0.868, 0.898-0.921 in two runs
#: at full strength (mean 0.888); 0.912, 0.935, 0.866, 0.905 with none.
CALIBRATED_INTENSITY_STRENGTH = 0.25


def augment_strengths(intensity: dict[str, Any]) -> AugmentStrengths:
    """The augmentation for examples normalised by ``intensity`` (see above)."""
    if intensity.get("kind") == "window":
        return AugmentStrengths(intensity=CALIBRATED_INTENSITY_STRENGTH)
    return AugmentStrengths()


@dataclass
class ClassifierTrainResult:
    """The kept model package, its card, its held-out figures and the history.

    ``kept`` says in words which weights the package holds and what chose them.
    """

    best_path: Path
    last_path: Path
    card: ModelCard
    metrics: dict[str, Any] | None
    kept: str
    history: list[dict[str, Any]] = field(default_factory=list)


def _check(config: ClassifierTrainConfig) -> None:
    config.check()
    if config.architecture not in CLASSIFIERS:
        raise ClassificationError(
            f"unknown classifier architecture {config.architecture!r}; "
            f"choose one of {', '.join(CLASSIFIERS)}"
        )


def train_classifier_job(
    examples: Examples, config: ClassifierTrainConfig, validation: Examples | None = None
) -> Job[ClassifierTrainResult]:
    """Train on ``examples``; validate on ``validation`` or a spatially separate split.

    Checks the settings, the examples and the outputs at once, raising
    :class:`ClassificationError` (or :class:`~napari_medai.core.errors.MedaiError`)
    before any work starts.
    """
    _check(config)
    if len(examples) == 0:
        raise ClassificationError("no training examples")
    if validation is None and config.test_fraction > 0 and len(np.unique(examples.positions)) >= 2:
        train_idx, val_idx = spatial_split(
            examples.positions, config.test_fraction, examples.labels
        )
        training, validation = examples.subset(train_idx), examples.subset(val_idx)
        held_out = _split_text(validation)
    else:
        training = examples
        held_out = "examples the user set aside" if validation is not None else "none"
    training.check_classes()
    if not config.resume:
        check_can_write(Path(config.out_dir), config.overwrite)
        check_can_write(config.checkpoints, config.overwrite)
    device = choose_device(config.device)
    return _train(training, validation, held_out, config, device)


def _lacking(examples: Examples) -> str:
    """The classes without an example, as ``'a' or 'b'`` ("" when every class has one)."""
    return " or ".join(repr(name) for name, count in examples.counts().items() if count == 0)


def _split_text(validation: Examples) -> str:
    """What the automatic split held out, and in words what it lacks when it must."""
    text = (
        f"spatially separate split: slice positions {validation.positions.min():g}"
        f"-{validation.positions.max():g} held out"
    )
    lacking = _lacking(validation)
    if lacking:
        text += (
            f"; no block of neighbouring slices holds every class and leaves some of each to "
            f"train on, so it holds no {lacking} example"
        )
    return text


def _new_card(examples: Examples, config: ClassifierTrainConfig) -> ModelCard:
    args = copy.deepcopy(
        config.architecture_args
        if config.architecture_args is not None
        else (DEFAULT_ARGS if config.architecture == DEFAULT_ARCHITECTURE else {})
    )
    names = examples.class_names
    return ModelCard(
        name=config.name or default_model_name(names),
        architecture=config.architecture,
        architecture_args=args,
        label_names=dict(names),
        patch_size=list(examples.patch_size),
        task=TASK,
        spatial_dims=examples.spatial_dims,
        in_channels=2 * examples.context_slices + 1,
        context_slices=examples.context_slices,
        intensity=dict(examples.intensity),
    )


class _Session(Steps):
    """One training run: network, optimizer, sampler; the training loop drives it."""

    def __init__(
        self,
        examples: Examples,
        validation: Examples | None,
        held_out: str,
        config: ClassifierTrainConfig,
        device: torch.device,
    ) -> None:
        self.examples, self.validation, self.held_out = examples, validation, held_out
        self.config, self.device = config, device
        self.rng = np.random.default_rng(config.seed)
        if config.seed is not None:
            set_determinism(seed=config.seed)
        self.iteration, self.elapsed_s = 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_metrics, self.best_saved = -1.0, None, False
        self.best_iteration: int | None = None
        self.lacking = _lacking(validation) if validation is not None and len(validation) else ""
        if self.lacking:
            self.opening = (
                f"the held-out examples hold no {self.lacking} example, so no held-out figure "
                "can judge the model: the last weights will be kept"
            )
        optimizer_state = None
        if config.resume:
            saved = read_state(config.checkpoints)
            self.card, network = load_model_package(config.checkpoints / LAST)
            if self.card.label_names != examples.class_names:
                raise ClassificationError(
                    f"the checkpoint learnt classes {self.card.label_names}, the examples have "
                    f"{examples.class_names}; start a new model"
                )
            self.iteration, self.elapsed_s = int(saved["iteration"]), float(saved["elapsed_s"])
            self.history = list(saved["history"])
            self.best_score = float(saved["best_score"])
            self.best_iteration = saved.get("best_iteration")
            self.best_saved = Path(config.out_dir).is_dir()
            optimizer_state = load_optimizer_state(config.checkpoints, saved)
        else:
            self.card = _new_card(examples, config)
            network = build_network(self.card)
        self.network = network.to(device).train()
        counts = np.bincount(examples.labels, minlength=max(examples.class_names) + 1)
        weights = 1.0 / np.maximum(counts[examples.labels], 1)
        self.weights = weights / weights.sum()
        seed = config.seed if config.seed is not None else int(self.rng.integers(2**31))
        self.strengths = augment_strengths(examples.intensity)
        self.augment = Augmenter(examples.spatial_dims, seed, strengths=self.strengths)
        self.loss = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)

    def anneal(self, fraction: float) -> None:
        """Cosine learning-rate decay over the budget (``fraction`` of it spent).

        The run ends on settled weights rather than wherever the last full-rate
        step left them. On bench/classify.py's organ boxes (60 s, seeds 0-3) the
        macro ROC AUC was 0.917, 0.895, 0.868, 0.898 against 0.898, 0.898,
        0.848, 0.896 at a constant rate, but a repeat of seed 0 gave 0.876: runs
        on a time budget differ by about 0.02, as much as the gain. A resumed
        run decays again over its new budget. Written here because torch's
        schedulers count steps, and the budget is mostly time.
        """
        rate = self.config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * fraction))
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def step(self, fraction: float) -> dict[str, Any]:
        """One optimizer step on a class-balanced, augmented batch; its loss and rate."""
        self.anneal(fraction)
        size = min(self.config.batch_size, len(self.examples))
        rows = self.rng.choice(len(self.examples), size=size, p=self.weights)
        images = self.augment.images(self.examples.images[rows]).to(self.device)
        target = torch.from_numpy(self.examples.labels[rows]).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            logits = self.network(images)
        loss = self.loss(logits.float(), target)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return {"loss": float(loss.detach()), "learning_rate": self.optimizer.param_groups[0]["lr"]}

    def message(self, entry: dict[str, Any]) -> str:
        """The loss, and the held-out figures where they can judge the model."""
        message = f"iteration {entry['iteration']}: loss {entry['loss']:.3f}"
        if "val_auc" not in entry:
            return message
        if self.lacking:
            return message + f", the held-out examples hold no {self.lacking} example"
        return (
            message + f", held-out accuracy {entry['val_accuracy']:.2f}, "
            f"macro ROC AUC {entry['val_auc']:.2f}"
        )

    def validate(self, fraction: float) -> Job[dict[str, Any]]:
        """Held-out accuracy and ROC AUC, keeping the weights when they are the best so far.

        Without a class held out, neither can judge the model: no figures
        (the AUC is None). Quick, so it yields no progress of its own.
        """
        yield from ()
        metrics = self.metrics()
        self.consider(metrics)
        if metrics is None:
            return {}
        if self.lacking:
            return {"val_auc": None}
        return {"val_accuracy": metrics["accuracy"], "val_auc": metrics["macro"]["roc_auc"]}

    def metrics(self) -> dict[str, Any] | None:
        """Held-out figures of the current weights (None without held-out examples)."""
        if self.validation is None or len(self.validation) == 0:
            return None
        self.network.eval()
        try:
            with torch.no_grad(), autocast(self.device):
                logits = torch.cat(
                    [
                        self.network(chunk.to(self.device)).float().cpu()
                        for chunk in self.validation.images.split(64)
                    ]
                )
        finally:
            self.network.train()
        probabilities = torch.softmax(logits, 1).numpy()
        return classification_metrics(
            self.validation.labels, probabilities, self.card.label_names, self.held_out
        )

    def card_now(self, metrics: dict[str, Any] | None) -> ModelCard:
        """The card with the training facts (counts only, no patient identifiers)."""
        info = {
            "trained_with": "napari-medai",
            "iterations": self.iteration,
            "training_time_s": round(self.elapsed_s, 2),
            "examples": self.examples.counts(),
            "sources": self.examples.sources,
            "held_out": self.held_out,
            "kept": self.kept(),
            "metrics": None
            if metrics is None
            else {k: metrics[k] for k in ("computed_on", "accuracy", "macro")},
            "batch_size": self.config.batch_size,
            "learning_rate": self.config.learning_rate,
            "learning_rate_schedule": "cosine decay to 0 over the budget",
            "seed": self.config.seed,
            "sampling": "class-balanced",
            "loss": "cross-entropy",
            "optimizer": "AdamW",
            "augmentation": "affine (in-plane rotation, scale, shift), intensity scale/shift/noise",
            "augmentation_strengths": self.strengths.to_dict(),
            "versions": library_versions(),
        }
        return replace(self.card, training=info)

    def consider(self, metrics: dict[str, Any] | None) -> None:
        """Keep the weights when their held-out macro ROC AUC is at least the best so far.

        Without a class held out, the figures go with the last weights, which
        :meth:`finish` keeps: accuracy on one class would favour a model that
        calls everything that class.
        """
        if metrics is None or self.lacking:
            self.best_metrics = metrics
            return
        auc = metrics["macro"]["roc_auc"]
        if auc >= self.best_score:
            self.best_score, self.best_metrics, self.best_iteration = auc, metrics, self.iteration
            self.save_best(metrics)

    def kept(self) -> str:
        """Which weights the model package holds, and what chose them, in words."""
        if self.validation is None or len(self.validation) == 0:
            return "the last weights (nothing was held out to choose by)"
        if self.lacking:
            return (
                f"the last weights (the held-out examples hold no {self.lacking} example, "
                "so no held-out figure could choose)"
            )
        if self.best_iteration is None:
            return "the last weights (training stopped before the first held-out check)"
        return (
            f"the weights of iteration {self.best_iteration}, with the best held-out macro "
            f"ROC AUC ({self.best_score:.3f})"
        )

    def save_best(self, metrics: dict[str, Any] | None) -> None:
        save_model_package(Path(self.config.out_dir), self.card_now(metrics), self.network, True)
        self.best_saved = True

    def save_last(self) -> Path:
        state = {
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
        }
        return save_checkpoint(
            self.config.checkpoints, self.card_now(None), self.network, self.optimizer, state
        )

    def finish(self, finished: bool) -> None:
        """Write the last model, and keep it too when no held-out figure chose another."""
        if self.lacking or not self.best_saved:
            self.save_best(self.best_metrics)
        self.save_last()


def _train(
    examples: Examples,
    validation: Examples | None,
    held_out: str,
    config: ClassifierTrainConfig,
    device: torch.device,
) -> Job[ClassifierTrainResult]:
    schedule = Schedule(
        config.max_iters,
        config.max_time_s,
        config.validation_every_s,
        config.checkpoint_every_s,
        config.num_threads,
    )
    session = yield from run_training(
        lambda: _Session(examples, validation, held_out, config, device),
        schedule,
        "preparing the examples",
    )
    card = ModelCard.read(Path(config.out_dir) / CARD_FILE)
    return ClassifierTrainResult(
        best_path=Path(config.out_dir),
        last_path=config.checkpoints / LAST,
        card=card,
        metrics=session.best_metrics,
        kept=card.training["kept"],
        history=list(session.history),
    )
