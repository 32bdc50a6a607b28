"""DDP training under torchrun on the CPU (gloo): 2 ranks x batch b == 1 process x batch 2b."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.numpy import load_file

from napari_medai.core.cohort.manifest import ManifestError, read_training_manifest
from napari_medai.core.distributed import ddp
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.package import load_model_package
from napari_medai.core.training.checkpoints import LAST
from napari_medai.core.training.trainer import TrainConfig, train_job
from napari_medai.core.volume import volume_to_sitk

STEPS = 5


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, phantom) -> Path:
    """Two training pairs (the phantom and a shifted copy) in a CSV manifest."""
    folder = tmp_path_factory.mktemp("pairs")
    volume, labels = phantom
    lines = ["image,labels"]
    for index, shift in enumerate((0, 3)):
        for kind, item in (("ct", volume), ("labels", labels)):
            image = volume_to_sitk(item)
            if shift:
                image = sitk.GetImageFromArray(np.roll(item.array, shift, axis=2))
                image.CopyInformation(volume_to_sitk(volume))
            sitk.WriteImage(image, str(folder / f"{kind}{index}.nii.gz"))
        lines.append(f"ct{index}.nii.gz,labels{index}.nii.gz")
    path = folder / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def weights(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out.with_name(out.name + ".checkpoints") / LAST / "model.safetensors"))


def test_training_manifest_reads_pairs_relative_to_it(manifest, tmp_path):
    pairs = read_training_manifest(manifest)
    assert pairs == [
        (manifest.parent / f"ct{i}.nii.gz", manifest.parent / f"labels{i}.nii.gz") for i in (0, 1)
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("scan\nct0.nii.gz\n")
    with pytest.raises(ManifestError, match="'image' and 'labels'"):
        read_training_manifest(bad)


def test_one_process_is_not_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = ddp.from_environment()
    assert not context.active and context.is_main
    assert ddp.shard(("a", "b"), context) == ("a", "b")


#: The trainer's AdamW swapped for plain SGD in both runs (see the test's docstring).
SGD_PATCH = """
import torch
torch.optim.AdamW = lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)
"""
#: Largest weight difference allowed, as a fraction of the tensor's largest update.
RELATIVE_BOUND = 1e-3


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_weights_as_one_process_with_twice_the_batch(
    manifest, tmp_path, monkeypatch
):
    """Two ranks x batch 2 take the same SGD steps as one process x batch 4.

    Why SGD and not the trainer's AdamW: the claim is that DDP averages the ranks'
    gradients into the full batch's gradient. Float sums reduce in another order on
    another CPU, so the two gradients agree only to rounding (about 1e-7 of their
    size). SGD moves each weight by lr x gradient, so that rounding stays rounding
    in the weights; AdamW divides by the running gradient size, which turns it into
    lr-sized steps wherever a gradient is near zero (a 1e-5 bound after AdamW steps
    failed on an AVX-512 Xeon). With SGD the difference is bounded relative to how
    far training moved each tensor, plus the float32 rounding of the stored weights
    themselves (inner layers move about 1e-5 in five steps, weights of about 0.05
    round at 4e-9): RELATIVE_BOUND (1e-3) sits far above the gradients' rounding
    and far below what a real DDP fault changes (a rank's gradient lost, or summed
    instead of averaged, moves every update by tens of percent); the control run
    below, with half the batch, must exceed it.
    """
    common = ["--max-iters", str(STEPS), "--seed", "0", "--dims", "2d", "--dense"]
    common += ["--no-augment", "--device", "cpu", "--manifest", str(manifest)]
    two = tmp_path / "two ranks"
    script = tmp_path / "cli.py"
    script.write_text(
        SGD_PATCH + "import sys\nfrom napari_medai.cli import main\nsys.exit(main())\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [str(script), "train", "--out", str(two), "--batch-size", "2", *common]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(f"({STEPS} iterations in") == 1  # rank 0 alone prints

    initial: dict[str, np.ndarray] = {}

    def sgd_noting_initial_weights(params, lr, weight_decay):
        params = list(params)
        if not initial:
            initial.update({str(k): p.detach().numpy().copy() for k, p in enumerate(params)})
        return torch.optim.SGD(params, lr=lr)

    monkeypatch.setattr(torch.optim, "AdamW", sgd_noting_initial_weights)
    pairs = []
    for image_path, labels_path in read_training_manifest(manifest):
        image = read_volume(image_path)
        pairs.append((image, read_label_map(labels_path, reference=image)))

    def train_one_process(out: Path, batch_size: int) -> dict[str, np.ndarray]:
        config = TrainConfig(
            out_dir=out,
            dimensionality="2d",
            max_time_s=None,
            max_iters=STEPS,
            seed=0,
            dense=True,
            augment=False,
            device="cpu",
            batch_size=batch_size,
            num_threads=1,
        )
        run_job(train_job(pairs, config))
        return weights(out)

    expected = train_one_process(tmp_path / "one process", 4)
    got = weights(two)
    assert expected.keys() == got.keys()
    _, network = load_model_package(tmp_path / "one process.checkpoints" / LAST)
    names = [name for name, _ in network.named_parameters()]  # the optimizer's order
    start = dict(zip(names, initial.values()))
    assert start.keys() == expected.keys()
    assert all(start[name].shape == value.shape for name, value in expected.items())
    cancelled = normalised_biases(tmp_path / "one process")
    assert cancelled  # the check below must not be vacuous

    def worst_excess(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        """Largest weight difference between two runs, as a fraction of what rounding allows."""
        worst = 0.0
        for name in a.keys() - cancelled:
            moved = np.abs(a[name] - start[name]).max()
            assert moved > 0, f"{name} did not train"
            # Each step writes each weight back in float32, rounding it by up to half a
            # unit in the last place of its size, in each run.
            stored = STEPS * np.spacing(np.abs(a[name]).max())
            allowed = RELATIVE_BOUND * moved + stored
            worst = max(worst, np.abs(b[name] - a[name]).max() / allowed)
        return worst

    assert worst_excess(expected, got) < 1
    half_batch = train_one_process(tmp_path / "half the batch", 2)
    assert worst_excess(expected, half_batch) > 1


def normalised_biases(out: Path) -> set[str]:
    """Convolution biases followed by an instance norm (mathematically zero gradient)."""
    _, network = load_model_package(out.with_name(out.name + ".checkpoints") / LAST)
    return {
        f"{name}.conv.bias"
        for name, module in network.named_modules()
        if hasattr(module, "adn") and hasattr(module.adn, "N") and module.conv.bias is not None
    }
