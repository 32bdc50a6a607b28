"""Train a GAN on the open scan as a generator job; save the generator as a model package.

:func:`train_gan_job` yields a :class:`Progress` after every step of the
generator and critic (a fraction of a second on a CPU) with both losses, and
every ``preview_every_s`` seconds a preview grid of samples (in [0, 1]) in
the payload. Stopping the iteration saves the generator trained so far. At
the end of the budget the generator is measured against held-out real
patches (:mod:`.quality`) and the result goes on its card. Budgets, threads
and the stop are ``core.training.loop``'s.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import PatchAdversarialLoss
from monai.utils import set_determinism
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel

from napari_medai.core.devices import choose_device
from napari_medai.core.files import check_can_write
from napari_medai.core.generative.config import GanConfig, GanResult, GenerativeError
from napari_medai.core.generative.patches import PatchSource
from napari_medai.core.generative.quality import quality_job
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.models import generators as networks
from napari_medai.core.models.card import GENERATION_TASK, ModelCard
from napari_medai.core.models.package import save_model_package
from napari_medai.core.training.config import BUDGET_CLOCKS
from napari_medai.core.training.loop import Schedule, Steps, library_versions, run_training
from napari_medai.core.volume import LabelMap, Volume

#: Patches shown in a preview grid.
PREVIEW_COUNT = 8
#: Decay of the generator's weight average (samples come from the average, which
#: smooths the step-to-step wander of adversarial training); it ramps up from 0.
EMA_DECAY = 0.995


def train_gan_job(image: Volume, labels: LabelMap | None, config: GanConfig) -> Job[GanResult]:
    """Train a GAN on 2D axial patches of ``image`` (read only) as a job.

    Checks the settings, the input and the output folder at once (raising
    :class:`~napari_medai.core.errors.MedaiError`), before any work starts.
    """
    config.check()
    if config.kind == "conditional" and labels is None:
        raise GenerativeError("a label-conditioned GAN needs labels: pick a labels layer")
    check_can_write(Path(config.out_dir), config.overwrite)
    device = choose_device(config.device)
    rng = np.random.default_rng(config.seed)
    source = PatchSource(image, labels, config.patch_size, config.holdout_every, rng)
    return _train(image, source, config, device)


def _train(
    image: Volume, source: PatchSource, config: GanConfig, device: torch.device
) -> Job[GanResult]:
    schedule = Schedule(
        config.max_iters,
        config.max_time_s,
        threads=config.num_threads,
        now=BUDGET_CLOCKS[config.budget_clock],
        share=0.9,
    )
    gan = yield from run_training(
        lambda: _Gan(image, source, config, device), schedule, f"building the {config.kind} GAN"
    )
    return GanResult(Path(config.out_dir), gan.saved_card, gan.history, gan.quality)


class _Gan(Steps):
    """Generator, critic, optimisers and one training step."""

    saving = "saving the generator"

    def __init__(
        self, image: Volume, source: PatchSource, config: GanConfig, device: torch.device
    ) -> None:
        if config.seed is not None:
            set_determinism(seed=config.seed)
        self.image = image
        self.source = source
        self.config = config
        self.device = device
        self.conditional = config.kind == "conditional"
        architecture, args = networks.generator_args(
            config.kind, config.patch_size, config.latent_dim
        )
        names = {v: ("background" if v == 0 else f"label {v}") for v in source.values}
        self.card = ModelCard(
            name=config.name or f"{config.kind} GAN {config.patch_size}px",
            architecture=architecture,
            architecture_args=args,
            label_names=names if self.conditional else {},
            patch_size=[1, config.patch_size, config.patch_size],
            task=GENERATION_TASK,
            spatial_dims=2,
            in_channels=len(source.values) + 1 if self.conditional else 1,
            intensity=source.intensity,
        )
        self.generator = networks.build_generator(self.card).to(device).train()
        self.average = AveragedModel(self.generator, avg_fn=_ramped_ema, use_buffers=True)
        critic_channels = 1 + (len(source.values) if self.conditional else 0)
        self.critic = _spectral(networks.build_discriminator(critic_channels)).to(device).train()
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(
            self.generator.parameters(), config.learning_rate, betas=betas
        )
        self.opt_d = torch.optim.Adam(self.critic.parameters(), config.learning_rate, betas=betas)
        self.adversarial = PatchAdversarialLoss(criterion="hinge")
        seed = config.seed if config.seed is not None else int(source.rng.integers(2**31))
        self.noise = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, Any]] = []
        self.quality: dict[str, Any] = {}
        self.saved_card: ModelCard | None = None
        self.next_preview = 0.0
        preview_real, preview_labels = source.batch(PREVIEW_COUNT, held_out=True)
        self.preview_input = self.inputs(preview_labels, PREVIEW_COUNT)
        self.preview_real = preview_real

    def inputs(self, labels: torch.Tensor | None, count: int) -> torch.Tensor:
        """The generator's input: latent vectors, or one-hot labels plus noise."""
        if self.conditional:
            onehot = networks.label_channels(labels, self.source.values)
            return networks.condition(onehot, self.noise).to(self.device)
        return networks.latent(count, self.config.latent_dim, self.noise).to(self.device)

    def _critic(self, image: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        """The critic's scores for an image (with its label map for a conditional GAN)."""
        return self.critic(image if onehot is None else torch.cat([image, onehot], dim=1))[-1]

    def step(self, fraction: float) -> dict[str, Any]:
        """One critic and one generator update; their losses."""
        real, labels = self.source.batch(self.config.batch_size)
        real = real.to(self.device)
        z = self.inputs(labels, len(real))
        onehot = z[:, :-1] if self.conditional else None
        fake = self.generator(z)
        self.opt_d.zero_grad(set_to_none=True)
        score_real = self._critic(real, onehot)
        score_fake = self._critic(fake.detach(), onehot)
        loss_d = 0.5 * (
            self.adversarial(score_real, target_is_real=True, for_discriminator=True)
            + self.adversarial(score_fake, target_is_real=False, for_discriminator=True)
        )
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        score = self._critic(fake, onehot)
        loss_g = self.adversarial(score, target_is_real=True, for_discriminator=False)
        if self.conditional:
            # pix2pix: the paired real image anchors the layout the labels imply.
            loss_g = loss_g + self.config.l1_weight * torch.nn.functional.l1_loss(fake, real)
        loss_g.backward()
        self.opt_g.step()
        self.average.update_parameters(self.generator)
        self.iteration += 1
        return {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach())}

    def message(self, entry: dict[str, Any]) -> str:
        return (
            f"step {entry['iteration']}: generator {entry['loss_g']:.3f}, "
            f"critic {entry['loss_d']:.3f}"
        )

    def payload(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry, with a preview grid every ``preview_every_s`` seconds (and first)."""
        payload = dict(entry)
        if entry["elapsed_s"] >= self.next_preview:
            payload["preview"] = self.preview()
            self.next_preview = entry["elapsed_s"] + self.config.preview_every_s
        return payload

    def conclude(self) -> Job[None]:
        self.quality = yield from _measure(self)

    def finish(self, finished: bool) -> None:
        """Save the generator trained so far (with the quality report once measured)."""
        if self.iteration:
            self.saved_card = _card(self)
            save_model_package(
                Path(self.config.out_dir), self.saved_card, self.average.module, overwrite=True
            )

    def generate(self, z: torch.Tensor) -> np.ndarray:
        """Samples of the averaged generator for ``z`` as (n, y, x) in [0, 1], in eval mode."""
        generator = self.average.module.eval()
        with torch.no_grad():
            out = generator(z.to(self.device))
        return ((out[:, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)

    def preview(self) -> np.ndarray:
        """Real held-out patches (top row) above generated ones (bottom row), in [0, 1]."""
        real = _to_unit(self.preview_real)
        return networks.grid(
            np.concatenate([real, self.generate(self.preview_input)]), PREVIEW_COUNT
        )


def _measure(gan: _Gan) -> Job[dict[str, Any]]:
    """Quality of the generator against patches of the held-out slices."""
    count = gan.config.quality_samples
    real, labels = gan.source.batch(count, held_out=True)
    chunks = []
    for start in range(0, count, 32):
        part = None if labels is None else labels[start : start + 32]
        chunks.append(gan.generate(gan.inputs(part, len(real[start : start + 32]))))
        yield Progress(0.3 * start / count, "sampling for the quality measures")
    fake = np.concatenate(chunks)
    control = gan.source.batch(count, held_out=True)[0]
    quality = quality_job(
        _to_unit(real), fake, gan.config.seed or 0, gan.config.quality_steps, _to_unit(control)
    )
    report = yield from scaled(quality, 0.3, 1.0)
    report["held_out_slices"] = gan.source.held_out
    return report


def _to_unit(patches: torch.Tensor) -> np.ndarray:
    """(B, 1, y, x) patches in [-1, 1] as (B, y, x) in [0, 1]."""
    return (patches[:, 0].numpy() + 1.0) / 2.0


def _ramped_ema(average: torch.Tensor, current: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Exponential moving average whose decay ramps up to ``EMA_DECAY``.

    A fixed decay would keep the random initial weights in short runs; the ramp
    (as in TensorFlow's ExponentialMovingAverage with num_updates) forgets them.
    """
    decay = min(EMA_DECAY, (1.0 + float(count)) / (10.0 + float(count)))
    return decay * average + (1.0 - decay) * current


def _spectral(critic: torch.nn.Module) -> torch.nn.Module:
    """The critic with every convolution spectrally normalised (Lipschitz-bounded scores)."""
    for module in critic.modules():
        if isinstance(module, torch.nn.Conv2d):
            spectral_norm(module)
    return critic


def _card(gan: _Gan) -> ModelCard:
    """The card with the training facts (no patient identifiers)."""
    source, image = gan.source, gan.image
    last = gan.history[-1] if gan.history else {}
    info = {
        "trained_with": "napari-medai",
        "kind": gan.config.kind,
        "iterations": gan.iteration,
        "training_time_s": round(gan.elapsed_s, 2),
        "budget_clock": gan.config.budget_clock,
        "loss_generator": last.get("loss_g"),
        "loss_critic": last.get("loss_d"),
        "batch_size": gan.config.batch_size,
        "learning_rate": gan.config.learning_rate,
        "seed": gan.config.seed,
        "threads": torch.get_num_threads(),
        "loss": f"hinge PatchGAN, spectral-norm critic, generator EMA {EMA_DECAY}"
        + (f" + {gan.config.l1_weight} x L1 to the paired image" if gan.conditional else ""),
        "intensity_range": [source.low, source.high],
        "pixel_spacing_mm": [round(float(s), 4) for s in image.geometry.spacing[1:]],
        "data": {
            "shape": list(image.spatial_shape),
            "modality": image.modality,
            "train_slices": len(source.train_slices),
            "held_out_slices": len(source.test_slices) if source.held_out else 0,
        },
        "quality": gan.quality,
        "versions": library_versions(),
    }
    return replace(gan.card, training=info)
