"""deepbet brain extraction through ``napari-medai segment`` on the NIMH T1 templates.

The same template stored left-to-right and right-to-left must give masks that
agree in world space, each saved on its own file's exact grid; our pipeline
must reproduce deepbet's own nibabel-based run; the volume in the sidecar must
be a head's intracranial volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.cli import main
from napari_medai.core.io.reading import read_label_map
from napari_medai.core.resample import resample_label_map

pytestmark = [pytest.mark.real, pytest.mark.slow]

TEMPLATES = ("avg152T1_LR_nifti", "avg152T1_RL_nifti")
#: Intracranial volume of the MNI305 atlas, the constant FreeSurfer divides by the
#: atlas-registration determinant to estimate eTIV (Buckner et al. 2004). The
#: avg152T1 template lives in this (enlarged) space, so its mask should match it.
MNI305_ICV_ML = 1948.106


@pytest.fixture(scope="module")
def brain_run(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """Both templates segmented by one CLI call; returns (data folder, output folder)."""
    pytest.importorskip("deepbet")
    data = shared_data / "nifti_nimh"
    out = tmp_path_factory.mktemp("brain")
    inputs = [str(data / f"{name}.nii.gz") for name in TEMPLATES]
    args = ["segment", *inputs, "--model", "deepbet-brain", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    return data, out


def _mask(out: Path, name: str) -> Path:
    return out / f"{name}_deepbet-brain_seg.nii.gz"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("name", TEMPLATES)
def test_mask_has_its_source_geometry(brain_run, name):
    data, out = brain_run
    source = sitk.ReadImage(str(data / f"{name}.nii.gz"))
    mask = sitk.ReadImage(str(_mask(out, name)))
    assert mask.GetSize() == source.GetSize()
    for grid in ("GetOrigin", "GetSpacing", "GetDirection"):
        got, want = getattr(mask, grid)(), getattr(source, grid)()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=grid)


def test_lr_and_rl_masks_agree_in_world_space(brain_run):
    _, out = brain_run
    lr = read_label_map(_mask(out, TEMPLATES[0]))
    rl = read_label_map(_mask(out, TEMPLATES[1]))
    assert not np.array_equal(lr.geometry.direction, rl.geometry.direction)
    rl_on_lr = resample_label_map(rl, lr.geometry, lr.spatial_shape)
    assert _dice(lr.array == 1, rl_on_lr.array == 1) >= 0.99


def test_matches_deepbets_own_run(brain_run):
    """deepbet's own nibabel pipeline on the same file: the masks must coincide."""
    nib = pytest.importorskip("nibabel")
    from deepbet import BrainExtraction

    data, out = brain_run
    source = data / f"{TEMPLATES[0]}.nii.gz"
    _, own, _ = BrainExtraction(no_gpu=True).run(nib.load(source))
    own_path = out / "deepbet-own.nii.gz"
    nib.save(own, own_path)
    ours = read_label_map(_mask(out, TEMPLATES[0]))
    theirs = read_label_map(own_path)
    assert theirs.geometry.is_close(ours.geometry)
    assert _dice(ours.array == 1, theirs.array == 1) >= 0.999


@pytest.mark.parametrize("name", TEMPLATES)
def test_sidecar_reports_a_plausible_brain_volume(brain_run, name):
    data, out = brain_run
    sidecar = json.loads(_mask(out, name).with_suffix("").with_suffix(".json").read_text())
    volume_ml = sidecar["volumes_ml"]["brain"]
    assert volume_ml == pytest.approx(MNI305_ICV_ML, rel=0.05)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(_mask(out, name))))
    spacing = sitk.ReadImage(str(data / f"{name}.nii.gz")).GetSpacing()
    assert volume_ml == pytest.approx((mask == 1).sum() * np.prod(spacing) / 1000.0, rel=1e-6)
    assert sidecar["model"]["name"] == "deepbet-brain"
    assert sidecar["label_names"] == {"0": "background", "1": "brain"}
