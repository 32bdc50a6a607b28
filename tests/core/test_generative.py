"""GAN training, sampling, generator packages and bad input, on the phantom (tiny budgets)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.errors import MedaiError, ModelLoadError, OutputExistsError
from napari_medai.core.generative.config import GanConfig, GenerativeError
from napari_medai.core.generative.sample import (
    load_generator,
    masks_from_labels,
    sample_job,
    write_samples,
)
from napari_medai.core.generative.train import train_gan_job
from napari_medai.core.jobs import Progress, run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.training.synthetic import SyntheticPairs
from napari_medai.core.training.trainer import TrainConfig, train_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(out: Path, **changes) -> GanConfig:
    """A few steps on 32-pixel patches: enough to exercise every part."""
    config = GanConfig(
        out_dir=out,
        patch_size=32,
        max_time_s=None,
        max_iters=3,
        batch_size=4,
        seed=0,
        quality_samples=16,
        quality_steps=5,
        num_threads=1,
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def unconditional(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "unconditional"
    events: list[Progress] = []
    result = run_job(train_gan_job(phantom[0], None, tiny(out)), events.append)
    return result, events


@pytest.fixture(scope="module")
def conditional(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "conditional"
    return run_job(train_gan_job(*phantom, tiny(out, kind="conditional")))


def test_training_reports_losses_preview_and_quality(unconditional, phantom):
    result, events = unconditional
    steps = [e.payload for e in events if isinstance(e.payload, dict)]
    assert [s["iteration"] for s in steps] == [1, 2, 3]
    assert all(np.isfinite([s["loss_g"], s["loss_d"]]).all() for s in steps)
    preview = steps[0]["preview"]
    assert preview.shape == (64, 8 * 32) and 0.0 <= preview.min() <= preview.max() <= 1.0
    card = ModelCard.read(result.path / "card.json")
    assert card.task == "generation" and card.architecture == "UpsampleGenerator"
    info = card.training
    assert info["iterations"] == 3 and info["kind"] == "unconditional"
    assert info["pixel_spacing_mm"] == [5.0, 5.0]
    quality = info["quality"]
    assert 0.0 <= quality["two_sample_accuracy"] <= 1.0
    assert {"mmd2", "ms_ssim_diversity", "histogram_distance"} <= set(quality)
    assert phantom[0].array.dtype == np.int16  # the scan was only read


def test_samples_are_marked_synthetic_in_scan_units(unconditional):
    model = load_generator(unconditional[0].path)
    samples = run_job(sample_job(model, 5, seed=1))
    low, high = model.card.training["intensity_range"]
    assert samples.images.shape == (5, 32, 32) and samples.masks is None
    assert low <= samples.images.min() and samples.images.max() <= high
    assert samples.metadata["synthetic"] is True
    again = run_job(sample_job(model, 5, seed=1))
    np.testing.assert_array_equal(samples.images, again.images)


def test_conditional_generator_makes_paired_samples(conditional, phantom):
    model = load_generator(conditional.path)
    assert model.card.architecture == "SPADEGenerator"
    masks = masks_from_labels(phantom[1], 4, 32, seed=0)
    assert masks.shape == (4, 32, 32) and set(np.unique(masks)) <= set(model.card.label_names)
    samples = run_job(sample_job(model, 4, masks, seed=0))
    np.testing.assert_array_equal(samples.masks, masks)
    assert samples.label_names == model.card.label_names
    with pytest.raises(GenerativeError, match="label maps"):
        sample_job(model, 4)


def test_stop_saves_the_generator_so_far(phantom, tmp_path):
    job = train_gan_job(phantom[0], None, tiny(tmp_path / "g", max_iters=1000))
    for event in job:
        if isinstance(event.payload, dict):
            break
    job.close()
    card = ModelCard.read(tmp_path / "g" / "card.json")
    assert card.training["iterations"] == 1 and card.training["quality"] == {}


def test_bad_input_has_clear_messages(phantom, tmp_path):
    image, labels = phantom
    with pytest.raises(GenerativeError, match="smaller than the 80x80 patch"):
        train_gan_job(image, None, tiny(tmp_path / "a", patch_size=80))
    empty = replace(labels, array=np.zeros_like(labels.array))
    with pytest.raises(GenerativeError, match="labels are empty"):
        train_gan_job(image, empty, tiny(tmp_path / "b", kind="conditional"))
    with pytest.raises(GenerativeError, match="needs labels"):
        train_gan_job(image, None, tiny(tmp_path / "c", kind="conditional"))
    with pytest.raises(GenerativeError, match="labels are empty"):
        masks_from_labels(empty, 2, 32)


def test_wrong_task_packages_are_refused(unconditional, phantom, tmp_path):
    card = ModelCard(
        name="liver",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "liver"},
        patch_size=[1, 32, 32],
        spatial_dims=2,
    )
    save_model_package(tmp_path / "seg", card, build_network(card))
    with pytest.raises(ModelLoadError, match="segmentation model, not an image generator"):
        load_generator(tmp_path / "seg")
    generator = load_model(unconditional[0].path)
    with pytest.raises(ModelLoadError, match="image generator .* cannot segment"):
        segment_job(phantom[0], generator, SegmentConfig(device="cpu"))
    config = TrainConfig(out_dir=tmp_path / "m", max_iters=1, init=generator)
    with pytest.raises(ModelLoadError, match="cannot be fine-tuned"):
        run_job(train_job([phantom], config))


def test_written_samples_never_carry_the_patient_grid(unconditional, tmp_path):
    samples = run_job(sample_job(load_generator(unconditional[0].path), 3, seed=0))
    paths = write_samples(samples, tmp_path / "synthetic_ct.nii.gz")
    image = sitk.ReadImage(str(paths[0]))
    assert image.GetSize() == (32, 32, 3) and image.GetOrigin() == (0.0, 0.0, 0.0)
    assert image.GetSpacing() == (5.0, 5.0, 1.0) and image.GetMetaData("descrip").startswith(
        "synthetic"
    )
    assert json.loads(paths[1].read_text())["synthetic"] is True
    with pytest.raises(OutputExistsError):
        write_samples(samples, tmp_path / "synthetic_ct.nii.gz")


def test_training_with_synthetic_pairs_says_so_on_the_card(conditional, phantom, tmp_path):
    image, labels = phantom
    sparse = np.zeros_like(labels.array)
    sparse[[6, 12, 18]] = labels.array[[6, 12, 18]]
    painted = replace(labels, array=sparse)
    samples = run_job(
        sample_job(load_generator(conditional.path), 4, masks_from_labels(labels, 4, 32))
    )
    pairs = SyntheticPairs.from_samples(samples)
    config = TrainConfig(
        out_dir=tmp_path / "m",
        max_iters=2,
        max_time_s=None,
        seed=0,
        num_threads=1,
        synthetic=pairs,
        synthetic_ratio=0.25,
    )
    result = run_job(train_job([(image, painted)], config))
    recorded = result.card.training["synthetic"]
    assert recorded["used"] and recorded["pairs"] == 4 and recorded["batch_share"] == 0.25
    plain = run_job(
        train_job([(image, painted)], replace(config, out_dir=tmp_path / "p", synthetic=None))
    )
    assert plain.card.training["synthetic"] is None
    with pytest.raises(MedaiError, match="2D or 2.5D training only"):
        run_job(
            train_job(
                [(image, painted)], replace(config, out_dir=tmp_path / "3", dimensionality="3d")
            )
        )
    unpaired = replace(samples, masks=None)
    with pytest.raises(MedaiError, match="no masks"):
        SyntheticPairs.from_samples(unpaired)


def test_cli_samples_a_generator_and_explains_bad_input(unconditional, phantom, tmp_path, capsys):
    from napari_medai.cli import main
    from napari_medai.core.io.writing import write_label_map

    out = tmp_path / "synthetic.nii.gz"
    assert main(["gan", "sample", str(unconditional[0].path), "-n", "3", "--out", str(out)]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 3)
    assert json.loads((tmp_path / "synthetic.json").read_text())["synthetic"] is True
    empty = write_label_map(
        replace(phantom[1], array=np.zeros_like(phantom[1].array)), tmp_path / "empty.nii.gz"
    )
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(phantom[0].array), str(image))
    args = ["gan", "train", str(image), "--labels", str(empty), "--conditional"]
    assert main([*args, "--out", str(tmp_path / "g"), "--max-iters", "1"]) == 2
    assert "labels are empty" in capsys.readouterr().err


def test_a_classifier_is_refused_where_a_label_map_is_needed(tmp_path, phantom):
    """Before: a classifier reached inference and failed with "returned shape ()"."""
    from cohort_scans import save_tiny_classifier

    classifier = load_model(save_tiny_classifier(tmp_path / "cls"))
    with pytest.raises(ModelLoadError, match="classification model .* cannot segment"):
        segment_job(phantom[0], classifier, SegmentConfig(device="cpu"))


def test_the_saved_generator_is_the_weight_average_and_the_critic_is_spectral(phantom, tmp_path):
    """Samples come from the generator's exponential moving average, not its last step."""
    torch = pytest.importorskip("torch")
    from napari_medai.core.generative.patches import PatchSource
    from napari_medai.core.generative.train import _Gan

    config = tiny(tmp_path / "gan")
    source = PatchSource(phantom[0], None, 32, config.holdout_every, np.random.default_rng(0))
    gan = _Gan(phantom[0], source, config, torch.device("cpu"))
    for _ in range(3):
        gan.step(0.0)
    gan.history.append({"loss_g": 0.0, "loss_d": 0.0})
    gan.finish(True)
    saved = load_generator(tmp_path / "gan").network.state_dict()
    averaged = gan.average.module.state_dict()
    last = gan.generator.state_dict()
    weights = [k for k in saved if k.endswith("weight")]
    assert all(torch.equal(saved[k], averaged[k]) for k in weights)
    assert any(not torch.equal(saved[k], last[k]) for k in weights)
    convolutions = [m for m in gan.critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(hasattr(m, "parametrizations") for m in convolutions)


def test_the_generator_upsamples_without_transposed_convolutions_and_old_packages_build():
    # Transposed stride-2 convolutions print a checkerboard a two-sample classifier spots at
    # once (accuracy 0.996 in bench/gan.py); packages trained with them still build.
    import torch

    from napari_medai.core.models.generators import build_generator, generator_args

    def card(architecture: str, args: dict) -> ModelCard:
        return ModelCard(
            name="g",
            task="generation",
            architecture=architecture,
            architecture_args=args,
            label_names={0: "image"},
            patch_size=[1, 64, 64],
        )

    architecture, args = generator_args("unconditional", 64, 16)
    new = build_generator(card(architecture, args))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in new.modules())
    assert new(torch.zeros(2, 16)).shape == (2, 1, 64, 64)
    old = build_generator(card("DCGANGenerator", args))
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in old.modules())
