"""Model cards and packages: plain data in, nothing executable."""

from __future__ import annotations

import json

import pytest
import torch

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import load_model_package, save_model_package


@pytest.fixture
def card():
    return ModelCard(
        name="tiny",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "liver"},
        patch_size=[1, 32, 32],
        spatial_dims=2,
        intensity={"kind": "window", "low": -160, "high": 240},
    )


def test_package_round_trip_gives_identical_outputs(card, tmp_path):
    torch.manual_seed(0)
    network = build_network(card).eval()
    save_model_package(tmp_path / "pkg", card, network)
    loaded_card, loaded = load_model_package(tmp_path / "pkg")
    assert loaded_card == card
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x))


def test_card_json_round_trip_and_validation(card):
    assert ModelCard.from_json(card.to_json()) == card
    data = json.loads(card.to_json())
    with pytest.raises(ModelLoadError, match="unknown card fields"):
        ModelCard.from_json(json.dumps({**data, "_target_": "os.system"}))
    with pytest.raises(ModelLoadError, match="newer"):
        ModelCard.from_json(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        ModelCard.from_json("{")


def test_unknown_architecture_is_refused_not_imported(card, tmp_path):
    card.architecture = "os.system"
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        build_network(card)


def test_weights_that_do_not_fit_the_card_are_refused(card, tmp_path):
    save_model_package(tmp_path / "pkg", card, build_network(card))
    bigger = json.loads((tmp_path / "pkg" / CARD_FILE).read_text())
    bigger["architecture_args"]["channels"] = [8, 16]
    (tmp_path / "pkg" / CARD_FILE).write_text(json.dumps(bigger))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model_package(tmp_path / "pkg")


def test_corrupt_weights_are_refused(card, tmp_path):
    save_model_package(tmp_path / "pkg", card, build_network(card))
    (tmp_path / "pkg" / WEIGHTS_FILE).write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_package(tmp_path / "pkg")
