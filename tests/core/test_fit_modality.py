"""A scan whose file names no modality: judged by its values, and warned about honestly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_medai.core.cohort.tasks import modality_note
from napari_medai.core.io.reading import read_volume
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.fit import (
    NOT_CT,
    best_fit,
    describe_modality,
    modality_from_intensities,
    modality_mismatch,
    volume_modality,
)
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.registry import ModelEntry
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import Volume

SHAPE = (16, 64, 64)


def model(modality: str | None) -> ModelEntry:
    return ModelEntry("m", "", "package", True, modality=modality, body_region="abdomen")


@pytest.fixture
def ct() -> np.ndarray:
    """The phantom CT, its field of view wider than the body: air in the corners."""
    return make_phantom(SHAPE, spacing=(6.0, 5.0, 5.0), seed=0)[0].array


@pytest.fixture
def mr(ct) -> np.ndarray:
    """The phantom as an MR would hold it: tissue contrast in positive arbitrary units,
    air at 0, and a little negative ringing at edges as resampled MR files have."""
    mr = (np.clip(ct, -1000, 400) + 1000) * 0.6
    mr[:, :, 0] = -40.0
    return mr.astype(np.int16)


def test_values_tell_ct_from_not_ct_and_leave_the_rest_unknown(ct, mr):
    assert modality_from_intensities(ct) == "CT"  # reaches air
    assert modality_from_intensities(mr) == NOT_CT  # nothing below fat's HU
    assert modality_from_intensities(mr.astype(np.uint16)) == NOT_CT
    inside = make_phantom(SHAPE, spacing=(3.0, 2.5, 2.5), seed=0)[0].array
    assert -900 < inside.min() < -100  # a field of view inside the body: fat, no air
    assert modality_from_intensities(inside) == ""
    zscored = (mr - mr.mean()) / mr.std()  # a normalised MR: reads as not CT, rightly
    assert modality_from_intensities(zscored) == NOT_CT
    assert modality_from_intensities(np.zeros(SHAPE, bool)) == ""


def test_a_scan_that_is_not_ct_is_warned_about_with_a_ct_model_only(mr):
    warning = modality_mismatch(model("CT"), "liver CT", modality_from_intensities(mr))
    assert warning == (
        "'liver CT' is made for CT abdomen scans, but this image is not a CT in Hounsfield "
        "units (no value below -100 HU, where a CT shows fat and air): "
        "the result will likely be wrong"
    )
    assert modality_mismatch(model("MR"), "liver MR", NOT_CT) is None
    assert modality_mismatch(model("PT"), "tumour PET", NOT_CT) is None
    assert modality_mismatch(model(None), "anything", NOT_CT) is None
    assert modality_mismatch(model("CT"), "liver CT", "") is None  # unknown: nothing to say
    assert "but this image is CT" in modality_mismatch(model("MR"), "liver MR", "CT")


def test_a_scan_that_is_not_ct_is_offered_models_for_any_scan_first():
    ct_model, mr_model, anything = model("CT"), model("MR"), model(None)
    assert best_fit([ct_model, mr_model, anything], NOT_CT) == 2
    assert best_fit([ct_model, mr_model], NOT_CT) is None
    assert describe_modality(NOT_CT) == "a scan other than CT"


@pytest.mark.real
def test_real_nifti_files_without_a_modality(shared_data):
    mr = read_volume(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz")
    assert mr.modality == "" and mr.array.min() < 0  # no header, and some ringing below 0
    assert volume_modality(mr) == NOT_CT
    flair = read_volume(shared_data / "niivue" / "FLAIR.nii.gz")
    assert flair.modality == "" and volume_modality(flair) == NOT_CT
    ct = read_volume(shared_data / "totalsegmentator" / "example_ct_sm.nii.gz")
    assert volume_modality(ct) == "CT"
    stats = read_volume(shared_data / "nifti_nimh" / "zstat1.nii.gz")  # a z-map: not CT either
    assert volume_modality(stats) == NOT_CT


def test_a_cohort_run_warns_about_a_ct_model_on_a_scan_that_is_not_ct(ct, mr):
    card = ModelCard("liver CT", "UNet", {}, {0: "background", 1: "liver"}, [1, 64, 64])
    model = LoadedModel(replace(card, modality="CT"), None, "liver-ct", "0" * 64)
    nifti_mr = Volume(mr)  # a file that states no modality
    assert "not a CT in Hounsfield units" in modality_note(model, nifti_mr)["warning"]
    assert modality_note(model, Volume(ct)) == {}
