"""The nnInteractive engine's plumbing, on a tiny random network saved as its releases are.

Random weights say nothing about how well nnInteractive segments: these tests check that
the engine loads a released-layout folder safely, keeps its session in a worker process
between updates, answers every prompt kind with a mask on the scan's grid, goes back to
the right mask when a prompt is taken away, and runs from the CLI.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip(
    "nnInteractive.inference.inference_session",
    reason="nnInteractive is not installed (pip install 'napari-medai[nninteractive]')",
)

from nninteractive_models import poison_checkpoint, save_tiny_nninteractive  # noqa: E402

from napari_medai.cli import main  # noqa: E402
from napari_medai.core.errors import MedaiError, ModelLoadError  # noqa: E402
from napari_medai.core.jobs import run_job  # noqa: E402
from napari_medai.core.phantom import make_phantom  # noqa: E402
from napari_medai.core.prompt import nninteractive_engine, nninteractive_model  # noqa: E402
from napari_medai.core.prompt.engine import available_engines, engine_named, update_job  # noqa: E402
from napari_medai.core.prompt.prompts import Box, Point, PromptError, Prompts, Scribble  # noqa: E402
from napari_medai.core.volume import volume_to_sitk  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_nninteractive(tmp_path_factory.mktemp("nninteractive") / "tiny_v1")


@pytest.fixture(scope="module")
def phantom_scan():
    return make_phantom(shape=(24, 64, 64), spacing=(6.0, 5.0, 5.0), seed=0)


@pytest.fixture(scope="module")
def engine(folder):
    started = engine_named("nninteractive", folder)
    yield started
    started.close()


def messages(job) -> tuple[list[str], object]:
    """The job's progress messages and its result."""
    said: list[str] = []
    result = run_job(job, lambda progress: said.append(progress.message))
    return said, result


def test_the_session_lives_in_the_worker_between_updates(engine, phantom_scan):
    volume, labels = phantom_scan
    initial = labels.array == 3
    session = engine.start(volume, initial)
    centre = tuple(int(v) for v in np.argwhere(initial).mean(axis=0).round())
    corner = (centre[0], 2, 2)  # its 64-voxel patch ends at x = 33; the kidney starts at 37
    first, result = messages(update_job(session, volume, Prompts(), "nninteractive"))
    assert any("giving the scan" in text for text in first)
    assert result.mask.array.shape == volume.spatial_shape
    np.testing.assert_array_equal(result.mask.array == 1, initial)  # no prompt: the start mask
    assert session.device == "cpu"  # "auto" on a machine without a GPU

    import torch

    from napari_medai.core.devices import choose_device

    assert session.device == str(choose_device("auto"))
    assert not torch.cuda.is_available()  # what makes "auto" the CPU here

    far = Prompts((Point(corner, positive=False),))
    second, far_result = messages(update_job(session, volume, far, "nninteractive"))
    # The scan went over once: the worker held the session for the second update.
    assert not any("giving the scan" in text for text in second)
    # The tiny network answers background everywhere: the prediction replaced the patch
    # around the click (64 voxels wide, clipped to the scan), which misses the kidney.
    np.testing.assert_array_equal(far_result.mask.array == 1, initial)
    near = far.plus(Point(centre, positive=True))
    near_result = run_job(update_job(session, volume, near, "nninteractive"))
    assert not near_result.mask.array.any()  # its patch covers the kidney: all background
    # Taking the last click away gives back the mask of the first click alone.
    undone = run_job(update_job(session, volume, far, "nninteractive"))
    np.testing.assert_array_equal(undone.mask.array, far_result.mask.array)
    # Taking every prompt away (a reset in the worker) gives back the start mask.
    reset = run_job(update_job(session, volume, Prompts(), "nninteractive"))
    np.testing.assert_array_equal(reset.mask.array == 1, initial)


def test_every_prompt_kind_gives_a_mask_of_the_scan(engine, phantom_scan):
    volume, _labels = phantom_scan
    session = engine.start(volume)
    prompts = Prompts(
        (
            Box((12, 10, 10), (12, 40, 40)),
            Box((8, 10, 10), (16, 40, 40)),  # 3D: the released model takes it on slice 12
            Scribble(((12, 20, 20), (12, 20, 30)), positive=True),
            Scribble(((12, 21, 20), (12, 21, 30)), positive=True),  # joins the one above
            Point((12, 30, 30), positive=False),
        )
    )
    said, result = messages(update_job(session, volume, prompts, "nninteractive"))
    assert result.mask.array.shape == volume.spatial_shape
    assert result.engine == "nninteractive"
    assert "nnInteractive: interaction 4 of 4" in said  # the two strokes were one interaction


def test_a_3d_box_goes_to_a_2d_only_model_on_its_middle_slice():
    class Released:
        supported_interactions = {"bbox2d": True, "bbox3d": False}

    assert nninteractive_model._bbox(Released(), Box((4, 1, 2), (9, 5, 6))) == [
        [6, 7],
        [1, 6],
        [2, 7],
    ]


def test_a_malicious_pickle_in_the_checkpoint_is_refused_without_running(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    marker = tmp_path / "the pickle ran"
    poison_checkpoint(bad, marker)
    with pytest.raises(ModelLoadError, match="holds more than weights") as refused:
        nninteractive_model.load_session(str(bad))
    assert "os.makedirs" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    # nnInteractive itself asks for weights_only=False; the switch is off again after.
    assert nninteractive_model.FORCE_WEIGHTS_ONLY not in os.environ


def _drop(folder, name):
    (folder / name).unlink()


def _second_fold(folder, _name):
    shutil.copytree(folder / "fold_0", folder / "fold_1")


def _network_named(text):
    def edit(folder, _name):
        plans = json.loads((folder / "plans.json").read_text())
        plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = text
        (folder / "plans.json").write_text(json.dumps(plans))

    return edit


@pytest.mark.parametrize(
    ("edit", "name", "words"),
    [
        (_drop, "plans.json", "it has no plans.json"),
        (_drop, "inference_info.json", "it has no inference_info.json"),
        (_drop, "fold_0/checkpoint_final.pth", "fold_0 has no checkpoint_final.pth"),
        (_second_fold, "", "one fold_* folder (found fold_0, fold_1)"),
        (_network_named("os.system"), "", "names code outside nnU-Net's networks"),
    ],
)
def test_a_bad_folder_is_one_line_naming_what_is_wrong(folder, tmp_path, edit, name, words):
    bad = shutil.copytree(folder, tmp_path / "bad")
    edit(bad, name)
    with pytest.raises(ModelLoadError) as refused:
        engine_named("nninteractive", bad)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_the_licence_is_the_license_files_first_line(folder, tmp_path):
    assert nninteractive_engine.check_model_folder(folder).license == "CC BY-NC-SA 4.0"
    bare = shutil.copytree(folder, tmp_path / "bare")
    (bare / "LICENSE").unlink()
    assert "no LICENSE file" in nninteractive_engine.check_model_folder(bare).license


def test_auto_takes_the_gpu_when_there_is_one(folder, monkeypatch):
    """The same path on this CPU machine, told it has a GPU: the weights are sent to CUDA."""
    from napari_medai.core import devices

    monkeypatch.setattr(devices, "_cuda_available", lambda index: True)
    with pytest.raises(ModelLoadError, match="deserialize object on a CUDA device"):
        nninteractive_model.load_session(str(folder), "auto")


def test_asking_for_a_gpu_this_machine_lacks_is_refused(folder):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(MedaiError, match="CUDA GPU"):
        nninteractive_model.load_session(str(folder), "cuda")


def test_the_engine_is_offered_only_with_the_package_and_a_folder(folder, monkeypatch):
    assert available_engines(None) == ["geodesic"]
    assert available_engines(folder) == ["geodesic", "nninteractive"]
    with pytest.raises(PromptError, match="needs the folder of nnInteractive's weights"):
        engine_named("nninteractive")
    monkeypatch.setattr(nninteractive_engine, "DISTRIBUTION", "not-nninteractive")
    assert available_engines(folder) == ["geodesic"]
    with pytest.raises(ModelLoadError, match="not installed"):
        engine_named("nninteractive", folder)


def test_the_cli_runs_nninteractive_from_its_folder(folder, phantom_scan, tmp_path, capsys):
    volume, _labels = phantom_scan
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(scan))
    prompts = tmp_path / "p.json"
    box = {"start": [12, 10, 10], "stop": [12, 40, 40]}
    prompts.write_text(json.dumps({"boxes": [box], "points": [{"zyx": [12, 20, 20]}]}))
    out = tmp_path / "mask.nii.gz"
    args = ["prompt", str(scan), "--prompts", str(prompts), "--out", str(out)]
    learned = [*args, "--engine", "nninteractive", "--model-folder", str(folder)]
    assert main(learned) == 0
    summary = json.loads(capsys.readouterr().out)  # nnInteractive's prints stay off stdout
    assert summary["engine"] == "nninteractive"
    assert np.asarray(nib.load(out).dataobj).shape == volume.spatial_shape[::-1]
    assert main([*args, "--engine", "nninteractive", "--overwrite"]) == 2
    assert "needs the folder of nnInteractive's weights" in capsys.readouterr().err


def test_a_session_outlives_its_worker_dying(engine, phantom_scan):
    """The worker's state goes with it: the next update gives the scan to a new one."""
    volume, _labels = phantom_scan
    session = engine.start(volume)
    prompts = Prompts((Point((12, 20, 20)),))
    run_job(update_job(session, volume, prompts, "nninteractive"))
    engine.worker._worker.process.kill()
    engine.worker._worker.process.wait()
    said, result = messages(update_job(session, volume, prompts, "nninteractive"))
    assert any("giving the scan" in text for text in said)
    assert result.mask.array.shape == volume.spatial_shape
