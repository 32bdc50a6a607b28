"""load_model on packages, TorchScript, checkpoints and registry names; unsafe files refused."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models import deepbet, registry
from napari_medai.core.models.axes import ReversedAxes, itk_orientation_from_axcodes
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import volume_from_sitk


def tiny_card(name: str = "tiny", channels: tuple[int, ...] = (4, 8)) -> ModelCard:
    return ModelCard(
        name=name,
        architecture="UNet",
        architecture_args={"channels": list(channels), "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "organ"},
        patch_size=[16, 16, 16],
    )


def tiny_network(card: ModelCard, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(card).eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)


# --- model packages ------------------------------------------------------------------


def test_package_loads_and_runs(tmp_path):
    card = tiny_card()
    network = tiny_network(card)
    folder = save_model_package(tmp_path / "tiny-pkg", card, network)
    loaded = load_model(folder)
    assert loaded.card == card
    assert loaded.sha256 == sha256(folder / "model.safetensors")
    assert loaded.extra["format"] == "package"
    assert not loaded.network.training
    assert_same_outputs(loaded.network, network)


# --- TorchScript ---------------------------------------------------------------------


def _script(
    tmp_path: Path, card: ModelCard, name: str = "model.pt"
) -> tuple[Path, torch.nn.Module]:
    network = tiny_network(card)
    path = tmp_path / name
    torch.jit.script(network).save(str(path))
    return path, network


@pytest.mark.parametrize("sidecar", ["<file>.json", "card.json"])
def test_torchscript_with_sidecar_card(tmp_path, sidecar):
    card = tiny_card("scripted")
    path, network = _script(tmp_path, card, "exported.ts")
    sidecar_path = tmp_path / ("exported.ts.json" if sidecar == "<file>.json" else "card.json")
    sidecar_path.write_text(card.to_json(), encoding="utf-8")
    loaded = load_model(path)
    assert loaded.card == card
    assert loaded.sha256 == sha256(path)
    assert loaded.extra["format"] == "torchscript"
    assert_same_outputs(loaded.network, network)


def test_torchscript_card_argument_and_zip_suffix(tmp_path):
    card = tiny_card("zipped")
    path, network = _script(tmp_path, card, "exported.zip")
    loaded = load_model(path, card=card)
    assert loaded.card.name == "zipped"
    assert_same_outputs(loaded.network, network)


def test_torchscript_without_card_is_refused(tmp_path):
    path, _ = _script(tmp_path, tiny_card())
    with pytest.raises(ModelLoadError, match="no model card"):
        load_model(path)


def test_torchscript_goes_through_jit_load_never_torch_load(tmp_path, monkeypatch):
    card = tiny_card()
    path, network = _script(tmp_path, card)
    jit_calls = []
    real_jit_load = torch.jit.load

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used for TorchScript")

    def spy(*args, **kwargs):
        jit_calls.append(args[0])
        return real_jit_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.jit, "load", spy)
    loaded = load_model(path, card=card)
    assert jit_calls == [str(path)]
    assert_same_outputs(loaded.network, network)


class _WritesFile:
    """A pickle payload that creates ``path`` when unpickled (via open(..., "w"))."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _RunsShell:
    """A pickle payload that runs a shell command creating ``path`` (via os.system)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def test_torchscript_with_malicious_pickle_inside_is_refused(tmp_path):
    """jit.load's unpickler knows only tensors and TorchScript types: no code runs."""
    card = tiny_card()
    clean, _ = _script(tmp_path, card)
    marker = tmp_path / "pwned-by-torchscript"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(evil, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(_RunsShell(marker), protocol=2)
            target.writestr(info, data)
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript"):
        load_model(evil, card=card)
    assert not marker.exists()


# --- plain checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["plain", "nested", "dataparallel"])
def test_checkpoint_loads_and_runs(tmp_path, layout):
    card = tiny_card()
    network = tiny_network(card, seed=3)
    state = network.state_dict()
    if layout == "nested":
        content = {"state_dict": state, "epoch": 7}
    elif layout == "dataparallel":
        content = {f"module.{k}": v for k, v in state.items()}
    else:
        content = state
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    (tmp_path / "weights.pth.json").write_text(card.to_json(), encoding="utf-8")
    loaded = load_model(path)
    assert loaded.extra["format"] == "checkpoint"
    assert loaded.sha256 == sha256(path)
    assert_same_outputs(loaded.network, network)


@pytest.mark.parametrize("payload", [_WritesFile, _RunsShell])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    if writer == "torch.save":
        torch.save(payload(marker), path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload(marker), handle)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(path, card=tiny_card())
    assert not marker.exists()
    # The payload is real: full unpickling (which load_model never does) creates the file.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as handle:
            pickle.load(handle)  # deliberately unsafe, to prove the payload works
    assert marker.exists()


def test_pickled_module_is_refused(tmp_path):
    card = tiny_card()
    path = tmp_path / "whole-module.pt"
    torch.save(tiny_network(card), path)
    with pytest.raises(ModelLoadError, match="state dict"):
        load_model(path, card=card)


def test_weights_that_do_not_fit_the_card(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_network(tiny_card(channels=(4, 8))).state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit UNet"):
        load_model(path, card=tiny_card(channels=(8, 16)))


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelLoadError, match="no state dict"):
        load_model(path, card=tiny_card())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.pt", "no such file"),
        (lambda p: _write(p / "scan.nii.gz", b"\x00" * 10), "not a model file"),
        (lambda p: _write(p / "garbage.pt", b"not a checkpoint"), "refused"),
        (lambda p: (p / "empty-folder").mkdir() or p / "empty-folder", "holds no model"),
    ],
)
def test_bad_sources_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(make(tmp_path), card=tiny_card())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- registry ------------------------------------------------------------------------


def test_registry_lists_and_loads_user_packages(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path))
    card = tiny_card("liver-net")
    network = tiny_network(card)
    save_model_package(tmp_path / "liver-v1", card, network)
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{", encoding="utf-8")

    names = {e.name: e for e in registry.list_models()}
    assert names["liver-v1"].kind == "package"
    assert names["liver-v1"].location == tmp_path / "liver-v1"
    assert "organ" in names["liver-v1"].description
    assert "not-a-model" not in names and "broken" not in names
    everything = {e.name: e for e in registry.list_models(include_unavailable=True)}
    assert everything["broken"].available is False

    loaded = load_model("liver-v1")
    assert loaded.card == card
    assert_same_outputs(loaded.network, network)


def test_registry_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path))
    with pytest.raises(ModelLoadError, match="napari-medai models"):
        load_model("no-such-model")


@pytest.mark.parametrize("installed", [True, False])
def test_deepbet_listed_only_when_installed(tmp_path, monkeypatch, installed):
    monkeypatch.setenv(registry.MODELS_ENV, str(tmp_path))
    monkeypatch.setattr(deepbet, "deepbet_available", lambda: installed)
    listed = [e.name for e in registry.list_models()]
    assert (deepbet.DEEPBET_NAME in listed) is installed
    entry = registry.find_model(deepbet.DEEPBET_NAME)
    assert entry is not None and entry.available is installed
    if not installed:
        with pytest.raises(ModelLoadError, match=r"napari-medai\[brain\]"):
            load_model(deepbet.DEEPBET_NAME)


def test_default_user_model_dir(monkeypatch):
    monkeypatch.delenv(registry.MODELS_ENV, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    expected = Path.home() / ".local" / "share" / "napari-medai" / "models"
    assert registry.user_model_dir() == expected


# --- orientation conventions ---------------------------------------------------------


@pytest.mark.parametrize(
    "axes", [((0, -1), (1, 1), (2, 1)), ((1, 1), (2, -1), (0, -1)), ((2, 1), (0, 1), (1, -1))]
)
def test_deepbet_orientation_code_gives_nibabel_canonical_array(tmp_path, axes):
    """DICOMOrient to the deepbet card's code, reversed axes == as_closest_canonical."""
    affine = np.zeros((4, 4))
    for column, (world_axis, sign) in enumerate(axes):
        affine[world_axis, column] = sign * (1.0 + column)
    affine[:3, 3] = [10.0, -20.0, 5.0]
    affine[3, 3] = 1.0
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    canonical = np.asarray(nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32))

    code = deepbet.deepbet_card().orientation
    ours = volume_from_sitk(sitk.DICOMOrient(sitk.ReadImage(str(path)), code)).array
    np.testing.assert_array_equal(ours.transpose(2, 1, 0), canonical)
    seen = []
    ReversedAxes(lambda x: seen.append(x) or x)(torch.from_numpy(ours)[None, None])
    np.testing.assert_array_equal(seen[0][0, 0].numpy(), canonical)


@pytest.mark.parametrize("bad", ["RRS", "RA", "XYZ", "LPSI"])
def test_bad_axcodes_are_refused(bad):
    with pytest.raises(ModelLoadError, match="orientation"):
        itk_orientation_from_axcodes(bad, "config")


def test_a_checkpoint_whose_card_asks_for_a_huge_network_allocates_nothing(tmp_path):
    """Checked on the meta device first: 20,000 channels would need 43 GB if built."""
    card = tiny_card()
    path = tmp_path / "weights.pth"
    torch.save(tiny_network(card, seed=3).state_dict(), path)
    huge = json.loads(card.to_json())
    huge["architecture_args"]["channels"] = [20_000, 20_000]
    (tmp_path / "weights.pth.json").write_text(json.dumps(huge), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(path)
