"""A model card from elsewhere is checked like any untrusted file: one line naming the field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from napari_medai.core.classification.model import TASK as CLASSIFICATION_TASK
from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import (
    CARD_FILE,
    GENERATION_TASK,
    LIMITS,
    TASKS,
    WEIGHTS_FILE,
    ModelCard,
)
from napari_medai.core.models.deepbet import deepbet_card
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import load_model_package, save_model_package
from napari_medai.core.models.registry import MODELS_ENV, list_models


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(
        name="tiny",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "liver"},
        patch_size=[1, 32, 32],
        spatial_dims=2,
        spacing=[5.0, 0.8, 0.8],
        orientation="LPS",
        intensity={"kind": "window", "low": -160, "high": 240},
    )


@pytest.fixture
def package(card, tmp_path):
    torch.manual_seed(0)
    return save_model_package(tmp_path / "pkg", card, build_network(card))


def _with(package, field: str, value) -> None:
    """Rewrite one field of the package's card (as a hand-edited or foreign card would)."""
    data = json.loads((package / CARD_FILE).read_text())
    data[field] = value
    (package / CARD_FILE).write_text(json.dumps(data))


CLASSIFIER_BOXES = {"sources": [{"kind": "boxes", "count": 9, "box": [32.0, 32.0]}]}


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("label_names", ["background", "liver"], "'label_names' must be a JSON object"),
        ("label_names", {"0": "background", "liver": "1"}, "'label_names' has key str 'liver'"),
        ("label_names", {"0": "background", "-1": "air"}, "'label_names' has key"),
        ("label_names", {"0": "background", "70000": "x"}, "'label_names' has label value 70000"),
        ("label_names", {"0": "background", "1": {"name": "liver"}}, "'label_names.1' must be"),
        ("intensity", "window -160 240", "'intensity' must be a JSON object"),
        ("intensity", {"kind": "window", "low": 240, "high": -160}, "'intensity' window"),
        ("intensity", {"kind": "window", "low": "a"}, "'intensity.low' must be a number"),
        ("format_version", "1", "'format_version' must be a whole number"),
        ("format_version", 1e300, "newer than this napari-medai"),
        ("format_version", 0, "'format_version' must be between 1 and 1"),
        ("patch_size", [1, 1e9, 1e9], "'patch_size' must be between 1 and 1024"),
        ("patch_size", [1, 32], "'patch_size' must be a list of 3 numbers"),
        ("patch_size", [512, 512, 512], "'patch_size' [512, 512, 512] holds more than"),
        ("spacing", [math.nan, 1.0, 1.0], "'spacing' must be a number between 0.01 and 50"),
        ("spacing", [0.0, 1.0, 1.0], "'spacing' must be a number between"),
        ("spacing", [-1.0, 1.0, 1.0], "'spacing' must be a number between"),
        ("spacing", [1e300, 1.0, 1.0], "'spacing' must be a number between"),
        ("name", "liver " * 40, "'name' is 240 characters long; at most 100"),
        ("name", "liver\nmodel", "'name' holds control characters"),
        ("task", "banana", "'task' must be one of segmentation, classification"),
        ("orientation", "XYZ", "'orientation' holds an unknown orientation 'XYZ'"),
        ("in_channels", 10**9, "'in_channels' must be between 1 and 16"),
        ("spatial_dims", "3", "'spatial_dims' must be a whole number"),
        ("architecture_args", {"channels": [[[[4]]]]}, "'architecture_args.channels' must be"),
        ("training", {"val_dice": "0.9"}, "'training.val_dice' must be a number"),
    ],
)
def test_junk_in_a_field_is_refused_naming_the_field_and_the_file(package, field, value, words):
    _with(package, field, value)
    with pytest.raises(ModelLoadError, match=f"^{package / CARD_FILE}: .*") as error:
        load_model_package(package)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("box", [[1e9, 1e9], [math.inf, 32.0]])
def test_a_classifier_box_too_big_to_tile_slices_is_refused(package, box):
    _with(package, "training", {"sources": [{"kind": "boxes", "count": 9, "box": box}]})
    with pytest.raises(ModelLoadError, match="'training.sources.box' must be a number between"):
        load_model_package(package)


def test_a_card_without_a_required_field_or_not_an_object_is_refused(package):
    data = json.loads((package / CARD_FILE).read_text())
    del data["patch_size"]
    (package / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"lacks the fields \['patch_size'\]"):
        load_model_package(package)
    (package / CARD_FILE).write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="a model card is a JSON object"):
        load_model_package(package)
    (package / CARD_FILE).write_text("[" * 100_000)
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        load_model_package(package)
    (package / CARD_FILE).write_bytes(b"\xff\xfe binary")
    with pytest.raises(ModelLoadError, match="not UTF-8"):
        load_model_package(package)


def test_a_card_larger_than_any_card_is_not_read(package):
    (package / CARD_FILE).write_text(" " * (LIMITS.card_bytes + 1) + "{}")
    with pytest.raises(ModelLoadError, match="larger than"):
        load_model_package(package)


def test_weights_linked_from_outside_the_model_folder_are_refused(package, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (package / WEIGHTS_FILE).rename(outside)
    (package / WEIGHTS_FILE).symlink_to(outside)
    with pytest.raises(ModelLoadError, match="link to a file outside the model folder"):
        load_model_package(package)


def test_files_linked_inside_the_folder_and_a_linked_folder_still_load(package, tmp_path):
    (package / WEIGHTS_FILE).rename(package / "weights.bin")
    (package / WEIGHTS_FILE).symlink_to("weights.bin")
    (tmp_path / "link").symlink_to(package)
    card, _ = load_model_package(tmp_path / "link")
    assert card.name == "tiny"


def test_a_card_linked_from_outside_is_listed_as_unreadable(package, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    package.rename(models / "pkg")
    (models / "pkg" / CARD_FILE).rename(tmp_path / "outside.json")
    (models / "pkg" / CARD_FILE).symlink_to(tmp_path / "outside.json")
    monkeypatch.setenv(MODELS_ENV, str(models))
    (entry,) = [e for e in list_models(include_unavailable=True) if e.kind == "package"]
    assert not entry.available
    assert "outside the model folder" in entry.description


def test_a_card_asking_for_a_huge_network_is_refused_before_building_it(package):
    # 65536 x 65536 3x3 kernels would be 150 GB; the shapes are compared on PyTorch's
    # meta device first, so nothing that size is ever allocated.
    _with(package, "architecture_args", {"channels": [65536, 65536], "strides": [2]})
    with pytest.raises(ModelLoadError, match="do not fit UNet as the card describes it"):
        load_model_package(package)


def test_cards_our_own_code_writes_are_valid(card):
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_json(deepbet_card().to_json()) == deepbet_card()
    assert {"segmentation", CLASSIFICATION_TASK, GENERATION_TASK} <= set(TASKS)
    boxes = ModelCard(
        **{**card.__dict__, "task": CLASSIFICATION_TASK, "training": CLASSIFIER_BOXES}
    )
    assert ModelCard.from_json(boxes.to_json()).training == CLASSIFIER_BOXES


def test_whole_floats_are_read_as_whole_numbers(card):
    data = json.loads(card.to_json()) | {"patch_size": [1.0, 32.0, 32.0], "in_channels": 1.0}
    loaded = ModelCard.from_json(json.dumps(data))
    assert loaded.patch_size == [1, 32, 32] and isinstance(loaded.patch_size[1], int)
    assert loaded.in_channels == 1 and isinstance(loaded.in_channels, int)
