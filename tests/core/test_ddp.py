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

from napari_medai.core.distributed import ddp
from napari_medai.core.distributed.manifest import ManifestError, read_training_manifest
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


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_weights_as_one_process_with_twice_the_batch(
    manifest, tmp_path
):
    common = ["--max-iters", str(STEPS), "--seed", "0", "--dims", "2d", "--dense"]
    common += ["--no-augment", "--device", "cpu", "--manifest", str(manifest)]
    two = tmp_path / "two ranks"
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom napari_medai.cli import main\nsys.exit(main())\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [str(script), "train", "--out", str(two), "--batch-size", "2", *common]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(f"({STEPS} iterations in") == 1  # rank 0 alone prints

    one = tmp_path / "one process"
    pairs = []
    for image_path, labels_path in read_training_manifest(manifest):
        image = read_volume(image_path)
        pairs.append((image, read_label_map(labels_path, reference=image)))
    config = TrainConfig(
        out_dir=one,
        dimensionality="2d",
        max_time_s=None,
        max_iters=STEPS,
        seed=0,
        dense=True,
        augment=False,
        device="cpu",
        batch_size=4,
        num_threads=1,
    )
    run_job(train_job(pairs, config))

    expected, got = weights(one), weights(two)
    assert expected.keys() == got.keys()
    cancelled = normalised_biases(one)
    assert cancelled  # the check below must not be vacuous
    for name, value in expected.items():
        if name not in cancelled:
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    # The biases InstanceNorm cancels have a zero gradient, so AdamW turns float noise
    # into lr-sized steps in both runs; they cannot change what the networks compute.
    networks = [
        load_model_package(out.with_name(out.name + ".checkpoints") / LAST)[1] for out in (one, two)
    ]
    batch = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [network.eval()(batch) for network in networks]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def normalised_biases(out: Path) -> set[str]:
    """Convolution biases followed by an instance norm (mathematically zero gradient)."""
    _, network = load_model_package(out.with_name(out.name + ".checkpoints") / LAST)
    return {
        f"{name}.conv.bias"
        for name, module in network.named_modules()
        if hasattr(module, "adn") and hasattr(module.adn, "N") and module.conv.bias is not None
    }
