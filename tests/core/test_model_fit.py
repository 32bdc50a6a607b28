"""Model cards say what they are for; the fit check and the training verdict read them."""

from __future__ import annotations

import json

from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.fit import best_fit, modality_mismatch
from napari_medai.core.models.registry import ModelEntry
from napari_medai.core.training.quality import MIN_VAL_DICE, TrainingQuality


def card(**changes) -> ModelCard:
    fields = {
        "name": "m",
        "architecture": "UNet",
        "architecture_args": {},
        "label_names": {0: "background", 1: "liver"},
        "patch_size": [1, 64, 64],
        **changes,
    }
    return ModelCard(**fields)


def test_old_cards_load_without_modality_and_new_ones_keep_it():
    data = json.loads(card().to_json())
    del data["modality"], data["body_region"]
    old = ModelCard.from_json(json.dumps(data))
    assert old.modality is None and old.body_region is None
    new = ModelCard.from_json(card(modality="mri", body_region="head").to_json())
    assert new.modality == "MR" and new.body_region == "head"


def entry(name: str, modality: str | None) -> ModelEntry:
    return ModelEntry(name, "", "package", True, modality=modality)


def test_the_best_fit_never_offers_a_model_made_for_another_modality():
    mr, ct, anything = entry("mr", "MR"), entry("ct", "CT"), entry("any", None)
    assert best_fit([mr, anything, ct], "CT") == 2
    assert best_fit([mr, anything], "CT") == 1
    assert best_fit([mr], "CT") is None
    assert best_fit([mr, ct], "") is None  # unknown scan: only a model for any scan
    assert best_fit([], "MR") is None


def test_a_mismatch_is_put_in_words_and_unknowns_pass():
    brain = ModelEntry("deepbet-brain", "", "builtin", True, modality="MR", body_region="head")
    assert modality_mismatch(brain, "deepbet-brain", "CT") == (
        "'deepbet-brain' is made for MRI head scans, but this image is CT: "
        "the result will likely be wrong"
    )
    assert modality_mismatch(brain, "deepbet-brain", "MR") is None
    assert modality_mismatch(brain, "deepbet-brain", "") is None
    assert modality_mismatch(card(), "m", "CT") is None


def quality_of(val_dice, label_voxels: int, held_out: bool = True) -> TrainingQuality:
    data = [{"annotated_voxels": 4096, "label_voxels": {"1": label_voxels}}]
    training = {"val_dice": val_dice, "data": data, "val_held_out": held_out, "val_slices": 2}
    return TrainingQuality.of(card(training=training))


def test_the_training_verdict():
    assert quality_of(0.9, 5000).ready
    junk = quality_of(0.002, 5000)
    assert not junk.ready and junk.problem.startswith("validation Dice 0.002: paint more slices")
    fit = quality_of(0.002, 5000, held_out=False)  # nothing held out: named for what it is
    assert fit.problem.startswith("Dice 0.002 fit on the painted slices: paint more slices")
    assert not quality_of(MIN_VAL_DICE - 0.01, 5000).ready
    assert "only 30 voxels" in quality_of(0.99, 30).problem
    assert "never validated" in quality_of(None, 5000).problem
    assert quality_of(0.9, 5000).annotated_voxels == 4096
