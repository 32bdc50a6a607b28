"""MONAI bundles: loaded when trusted, refused with a reason when not, zips checked."""

from __future__ import annotations

import hashlib
import json
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from monai.transforms import Orientation

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.axes import itk_orientation_from_axcodes
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import volume_from_sitk

NETWORK_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}
WINDOW = {
    "_target_": "ScaleIntensityRanged",
    "keys": "image",
    "a_min": -57,
    "a_max": 164,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
}


def make_bundle(
    root: Path, intensity: dict | None = None, yaml_torchscript: bool = False, marker: bool = False
) -> torch.nn.Module:
    """Write a small bundle folder at ``root`` and return its (seeded) network."""
    torch.manual_seed(0)
    network = UNet(**NETWORK_ARGS).eval()
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    metadata = {
        "name": "Tiny spleen",
        "version": "0.1.2",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [32, 24, 16]}},
            "outputs": {
                "pred": {
                    "num_channels": 3,
                    "channel_def": {"0": "background", "1": "spleen", "2": "liver"},
                }
            },
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    args = dict(NETWORK_ARGS)
    if marker:
        # Evaluated only when the config is parsed: proves a bundle config runs code.
        args["channels"] = "$[open(@bundle_root + '/config-ran.txt', 'w').close() or 4, 8]"
    config = {
        "bundle_root": ".",
        "network_def": {"_target_": "UNet", **args},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.25, 2.0]},
                intensity or WINDOW,
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 24, 16], "overlap": 0.5},
    }
    if yaml_torchscript:
        import yaml

        del config["network_def"]
        (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        torch.jit.script(network).save(str(root / "models" / "model.ts"))
    else:
        (root / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
        torch.save(network.state_dict(), root / "models" / "model.pt")
    return network


def zip_folder(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, Path(folder.name) / file.relative_to(folder))
    return path


def reference_output(network: torch.nn.Module, x_zyx: torch.Tensor) -> torch.Tensor:
    """What MONAI would compute: the network on the (i, j, k) = numpy-transposed array."""
    x_ijk = torch.from_numpy(np.ascontiguousarray(x_zyx[0, 0].numpy().T))[None, None]
    with torch.no_grad():
        out = network(x_ijk)[0].numpy()
    return torch.from_numpy(np.ascontiguousarray(np.transpose(out, (0, 3, 2, 1))))[None]


def test_trusted_bundle_folder_loads_with_its_card(tmp_path):
    root = tmp_path / "tiny_bundle"
    network = make_bundle(root)
    loaded = load_model(root, trusted=True)
    card = loaded.card
    assert card.name == "Tiny spleen"
    assert card.label_names == {0: "background", 1: "spleen", 2: "liver"}
    # MONAI lists (i, j, k); the card lists (z, y, x).
    assert card.patch_size == [16, 24, 32]
    assert card.spacing == [2.0, 1.25, 1.5]
    assert card.orientation == "RAS"
    assert card.intensity == {"kind": "window", "low": -57.0, "high": 164.0}
    assert loaded.extra == {"format": "bundle", "bundle_version": "0.1.2"}
    weights = root / "models" / "model.pt"
    assert loaded.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    x = torch.randn(1, 1, 8, 12, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.network(x), reference_output(network, x), rtol=0, atol=1e-6
        )


def test_untrusted_bundle_is_refused_and_its_config_never_runs(tmp_path):
    root = tmp_path / "bundle"
    make_bundle(root, marker=True)
    with pytest.raises(ModelLoadError, match="can run arbitrary Python.*trust"):
        load_model(root)
    assert not (root / "config-ran.txt").exists()
    load_model(root, trusted=True)
    assert (root / "config-ran.txt").exists()


def test_bundle_zip_trusted_and_refused(tmp_path):
    folder = tmp_path / "zipped_bundle"
    network = make_bundle(folder)
    archive = zip_folder(folder, tmp_path / "bundle.zip")
    with pytest.raises(ModelLoadError, match="arbitrary Python"):
        load_model(archive)
    loaded = load_model(str(archive), trusted=True)
    assert loaded.source == str(archive)
    assert loaded.card.patch_size == [16, 24, 32]
    x = torch.randn(1, 1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.network(x), reference_output(network, x), rtol=0, atol=1e-6
        )


def test_yaml_bundle_with_torchscript_weights(tmp_path):
    root = tmp_path / "ts_bundle"
    network = make_bundle(root, yaml_torchscript=True)
    loaded = load_model(root, trusted=True)
    assert loaded.sha256 == hashlib.sha256((root / "models" / "model.ts").read_bytes()).hexdigest()
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.network(x), reference_output(network, x), rtol=0, atol=1e-6
        )


ZSCORE = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}
PERCENTILES = {
    "_target_": "ScaleIntensityRangePercentilesd",
    "keys": "image",
    "lower": 1,
    "upper": 99,
    "b_min": 0,
    "b_max": 1,
    "clip": True,
}


@pytest.mark.parametrize(
    ("intensity", "expected"),
    [
        (ZSCORE, {"kind": "zscore", "nonzero": True}),
        (PERCENTILES, {"kind": "percentile", "low": 1.0, "high": 99.0, "clip": True}),
        ({"_target_": "EnsureTyped", "keys": "image"}, {"kind": "none"}),
    ],
)
def test_bundle_intensity_becomes_card_intensity(tmp_path, intensity, expected):
    make_bundle(tmp_path / "b", intensity=intensity)
    assert load_model(tmp_path / "b", trusted=True).card.intensity == expected


def test_bundle_intensity_we_cannot_reproduce_is_refused(tmp_path):
    make_bundle(tmp_path / "b", intensity={**WINDOW, "b_min": -1.0})
    with pytest.raises(ModelLoadError, match=r"scaled to \[-1.0, 1.0\]"):
        load_model(tmp_path / "b", trusted=True)


def test_bundle_weights_that_do_not_fit(tmp_path):
    root = tmp_path / "b"
    make_bundle(root)
    torch.save(
        UNet(**{**NETWORK_ARGS, "channels": [8, 16]}).state_dict(), root / "models" / "model.pt"
    )
    with pytest.raises(ModelLoadError, match="do not fit UNet"):
        load_model(root, trusted=True)


def test_bundle_without_inference_config(tmp_path):
    root = tmp_path / "b"
    make_bundle(root)
    (root / "configs" / "inference.json").unlink()
    with pytest.raises(ModelLoadError, match="no configs/inference"):
        load_model(root, trusted=True)


def _zip_with(tmp_path: Path, member: zipfile.ZipInfo, data: bytes) -> Path:
    folder = tmp_path / "good"
    make_bundle(folder)
    path = zip_folder(folder, tmp_path / "bad.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, data)
    return path


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (zipfile.ZipInfo("../escaped.txt"), "'..'"),
        (zipfile.ZipInfo("good/configs/../../../escaped.txt"), "'..'"),
        (zipfile.ZipInfo("good\\..\\..\\escaped.txt"), "'..'"),
        (zipfile.ZipInfo("/tmp/escaped.txt"), "absolute path"),
        (zipfile.ZipInfo("C:/escaped.txt"), "absolute path"),
        (_symlink("good/models/link"), "symbolic link"),
    ],
)
@pytest.mark.parametrize("trusted", [True, False])
def test_unsafe_zip_members_are_refused_before_extraction(tmp_path, member, problem, trusted):
    path = _zip_with(tmp_path, member, b"/etc/passwd")
    scratch = Path(tempfile.gettempdir())
    before = sorted(scratch.glob("napari-medai-bundle-*"))
    with pytest.raises(ModelLoadError, match=problem):
        load_model(path, trusted=trusted)
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped.txt").exists()
    assert sorted(scratch.glob("napari-medai-bundle-*")) == before


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PLI", "SAR", "ILP"])
def test_monai_axcodes_and_itk_codes_give_the_same_array(axcodes):
    """MONAI's Orientation(axcodes) on (i, j, k) == DICOMOrient(code) on our (z, y, x), reversed."""
    data = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)  # (i, j, k)
    direction_lps = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    spacing, origin_lps = np.array([1.0, 2.0, 3.0]), np.array([5.0, -7.0, 11.0])
    # The same grid as MONAI sees it: an affine in RAS world (LPS with x and y negated).
    to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = to_ras @ direction_lps @ np.diag(spacing)
    affine[:3, 3] = to_ras @ origin_lps
    monai_array = Orientation(axcodes=axcodes)(MetaTensor(data[None], affine=affine))[0].numpy()

    image = sitk.GetImageFromArray(data.transpose(2, 1, 0))  # sitk takes (k, j, i)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin_lps.tolist())
    image.SetDirection(direction_lps.ravel().tolist())
    code = itk_orientation_from_axcodes(axcodes, "test")
    ours = volume_from_sitk(sitk.DICOMOrient(image, code)).array
    np.testing.assert_array_equal(ours.transpose(2, 1, 0), monai_array)


def _rewrite_metadata(root: Path, change) -> Path:
    path = root / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps(change(metadata)))
    return path


def _pred(metadata: dict, pred: dict) -> dict:
    metadata["network_data_format"]["outputs"]["pred"] = pred
    return metadata


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: _pred(m, {"channel_def": {"0": "background", "liver": "1"}}), "'label_names'"),
        (lambda m: _pred(m, {"num_channels": 10**9}), "num_channels must be a whole number"),
        (lambda m: _pred(m, {"num_channels": "3"}), "num_channels must be a whole number"),
        (lambda m: {**m, "network_data_format": "3 channels"}, "'network_data_format' must be"),
        (lambda m: [m], "bundle metadata must be a JSON object"),
    ],
    ids=["text-label-key", "billion-channels", "text-channels", "format-not-object", "a-list"],
)
def test_bundle_metadata_junk_is_refused_naming_the_file(tmp_path, change, words):
    root = tmp_path / "b"
    make_bundle(root)
    path = _rewrite_metadata(root, change)
    with pytest.raises(ModelLoadError, match=f"^{path}: ") as error:
        load_model(root, trusted=True)
    assert words in str(error.value)
