"""Classifier metrics, examples, training (stop, resume) and the two CLI commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medai.cli import main
from napari_medai.core.classification.boxes import read_boxes
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifierTrainConfig,
    Region,
    default_model_name,
)
from napari_medai.core.classification.examples import (
    Examples,
    examples_from_label_slices,
    examples_from_regions,
    slice_classes,
)
from napari_medai.core.classification.metrics import (
    classification_metrics,
    roc_curve,
    save_metrics,
    spatial_split,
)
from napari_medai.core.classification.training import (
    ClassifierTrainResult,
    augment_strengths,
    train_classifier_job,
)
from napari_medai.core.errors import OutputExistsError
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import LIMITS
from napari_medai.core.models.package import load_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import volume_to_sitk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = {0: "other", 1: "liver"}
TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}


def test_metrics_state_what_they_were_computed_on(tmp_path):
    truth = [0, 0, 1, 1, 2, 2]
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0, 0, 1], [0, 0, 1.0]]
    )
    m = classification_metrics(truth, probabilities, {0: "a", 1: "b", 2: "c"}, "slices 10-12")
    assert m["computed_on"] == {
        "description": "slices 10-12",
        "cases": 6,
        "per_class": {"a": 2, "b": 2, "c": 2},
    }
    assert m["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(0.6667, abs=1e-4),
        "roc_auc": 1.0,
        "support": 2,
    }
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["macro"]["roc_auc"] == 1.0
    curve = m["roc_curves"]["a"]
    assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0
    json_path, csv_path = save_metrics(m, tmp_path / "metrics")
    assert json.loads(json_path.read_text())["accuracy"] == m["accuracy"]
    assert "computed on,slices 10-12,cases,6" in csv_path.read_text()
    with pytest.raises(OutputExistsError):
        save_metrics(m, tmp_path / "metrics")


def test_a_class_without_positives_has_no_auc():
    m = classification_metrics([0, 0, 0], np.full((3, 2), 0.5), NAMES, "three")
    assert m["per_class"]["liver"]["roc_auc"] is None and m["macro"]["roc_auc"] is None
    assert roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))["tpr"] == [
        0.0,
        0.5,
        0.5,
        1.0,
        1.0,
    ]


def test_spatial_split_keeps_neighbouring_slices_together():
    positions = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    train, test = spatial_split(positions, 0.3)
    assert sorted(train + test) == list(range(12))
    assert max(positions[i] for i in train) < min(positions[i] for i in test)
    assert [positions[i] for i in test] == [7, 8, 9, 9]
    with pytest.raises(ClassificationError, match="same slice"):
        spatial_split([4, 4, 4])


def test_the_split_picks_neighbouring_slices_that_hold_every_class():
    positions = list(range(10))
    # Positives on slices 2-4: the top block 7-9 holds none; 4-6 holds both classes and
    # leaves positives (2, 3) and negatives to train on.
    labels = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    train, test = spatial_split(positions, 0.3, labels)
    assert test == [4, 5, 6] and sorted(train + test) == positions
    # A single positive slice cannot be both held out and trained on: the top block again.
    assert spatial_split(positions, 0.3, [0, 0, 0, 0, 0, 1, 0, 0, 0, 0])[1] == [7, 8, 9]
    assert spatial_split(positions, 0.3, [0, 1] * 5)[1] == [7, 8, 9]  # the top holds both


def test_examples_from_boxes_and_from_label_slices(phantom):
    ct, organs = phantom
    boxes = [Region((z, 20, 20), (z + 1, 36, 36)) for z in range(3)]
    examples = examples_from_regions(ct, boxes, [0, 1, 1], NAMES)
    assert examples.images.shape == (3, 1, 16, 16)
    assert examples.intensity == {"kind": "window", "low": -160.0, "high": 240.0}
    assert examples.counts() == {"other": 1, "liver": 2}
    with pytest.raises(ClassificationError, match="have no name"):
        examples_from_regions(ct, boxes, [0, 1, 5], NAMES)

    assert slice_classes(np.array([[[0, 3]], [[0, 0]], [[2, 3]]]), [3]).tolist() == [1, 0, 1]
    assert slice_classes(np.array([[[0, 3]], [[2, 2]], [[2, 3]]]), [2, 3]).tolist() == [2, 1, 1]
    slices = examples_from_label_slices(ct, organs, [1], axis=0)
    present = organs.array.reshape(len(organs.array), -1).__eq__(1).any(1)
    assert slices.labels.tolist() == present.astype(int).tolist()
    assert slices.class_names == {0: "no liver", 1: "liver"}
    assert slices.patch_size == [1, 64, 64]


def _boxes(ct, organs):
    """Boxes on the liver and on other tissue, four per slice."""
    regions, labels = [], []
    for z in range(2, 22, 2):
        ys, xs = np.nonzero(organs.array[z] == 1)
        if len(ys):
            regions.append(Region.around((z, ys.mean(), xs.mean()), (1, 16, 16)))
            labels.append(1)
        regions.append(Region.around((z, 32, 32 + (z % 4)), (1, 16, 16)))
        labels.append(0)
    return examples_from_regions(ct, regions, labels, NAMES)


def test_train_stop_resume_and_refuse_a_missing_class(phantom, tmp_path):
    ct, organs = phantom
    examples = _boxes(ct, organs)
    config = ClassifierTrainConfig(
        tmp_path / "clf",
        max_time_s=None,
        max_iters=6,
        seed=0,
        device="cpu",
        batch_size=8,
        validation_every_s=0.0,
        architecture_args=TINY,
    )
    job = train_classifier_job(examples, config)
    payloads = [e.payload for e in iter(lambda: next(job, None), None) if e.payload]
    assert len(payloads) == 6 and "val_auc" in payloads[-1]
    rates = [p["learning_rate"] for p in payloads]
    expected = [config.learning_rate * (1 + math.cos(math.pi * i / 6)) / 2 for i in range(6)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    model = load_model(tmp_path / "clf")
    assert model.card.task == "classification" and model.card.label_names == NAMES
    # The phantom is CT on a fixed HU window: a quarter of the intensity augmentation.
    assert model.card.training["augmentation_strengths"]["intensity"] == 0.25
    assert augment_strengths({"kind": "percentile", "low": 1, "high": 99}).intensity == 1.0
    held = model.card.training["metrics"]["computed_on"]
    assert held["description"].startswith("spatially separate split")
    assert held["cases"] == sum(held["per_class"].values())

    config.resume, config.max_iters = True, 2
    resumed = run_job(train_classifier_job(examples, config))
    assert resumed.history[-1]["iteration"] == 8

    stopped = train_classifier_job(
        examples, ClassifierTrainConfig(tmp_path / "stop", max_time_s=30, device="cpu", **_tiny())
    )
    next(stopped)
    next(stopped)
    stopped.close()
    assert load_model(tmp_path / "stop").card.training["iterations"] == 1

    only_other = examples.subset([i for i, k in enumerate(examples.labels) if k == 0])
    with pytest.raises(ClassificationError, match="no training examples of class 'liver'"):
        train_classifier_job(only_other, ClassifierTrainConfig(tmp_path / "x", **_tiny()))


def _tiny() -> dict:
    return {"architecture_args": TINY, "batch_size": 4}


def test_box_files_json_and_csv(tmp_path):
    (tmp_path / "b.json").write_text(
        json.dumps(
            [
                {"start": [1, 2, 3], "stop": [2, 18, 19], "class": 1},
                {"centre": [4, 8, 8], "size": [1, 4, 4]},
            ]
        )
    )
    regions, classes = read_boxes(tmp_path / "b.json")
    assert regions == [Region((1, 2, 3), (2, 18, 19)), Region((4, 6, 6), (5, 10, 10))]
    assert classes == [1, None]
    (tmp_path / "b.csv").write_text("z,y,x,height,width,class\n3,10,10,4,4,0\n")
    assert read_boxes(tmp_path / "b.csv") == ([Region((3, 8, 8), (4, 12, 12))], [0])
    (tmp_path / "bad.csv").write_text("z,y\n1,2\n")
    with pytest.raises(ClassificationError, match="lacks x, height, width"):
        read_boxes(tmp_path / "bad.csv")


def test_cli_train_classifier_then_classify_with_cam(phantom, tmp_path, capsys):
    ct, organs = phantom
    image, labels = tmp_path / "ct.nii.gz", tmp_path / "organs.nii.gz"
    sitk.WriteImage(volume_to_sitk(ct), str(image))
    write_label_map(organs, labels)
    model = tmp_path / "liver_slices"
    argv = ["train-classifier", str(image), "--labels", str(labels), "--label-values", "1"]
    argv += ["--out", str(model), "--max-iters", "2", "--seed", "0", "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    present = int((organs.array == 1).any(axis=(1, 2)).sum())
    assert list(report["examples"].values()) == [24 - present, present]
    assert (tmp_path / "liver_slices_metrics.csv").is_file()
    assert report["kept"] == load_model(model).card.training["kept"]

    assert (
        main(
            [
                "classify",
                str(image),
                "--model",
                str(model),
                "--per-slice",
                "z",
                "--cam",
                str(tmp_path / "cams"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["scope"] == "slices" and len(out["predictions"]) == 24
    cam = read_volume(out["cam"])
    assert cam.geometry.is_close(read_volume(image).geometry)

    (tmp_path / "boxes.json").write_text(json.dumps([{"start": [3, 10, 10], "stop": [4, 30, 30]}]))
    argv = ["classify", str(image), "--model", str(model), "--boxes", str(tmp_path / "boxes.json")]
    assert main([*argv, "--cam", str(tmp_path / "box_cams"), "--cam-context", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictions"][0]["box"]["stop"] == [4, 30, 30]
    assert out["provenance"]["cam"]["context_pixels"] == 4

    assert main(["classify", str(image), "--model", str(model)]) == 2
    assert "2D classifier" in capsys.readouterr().err


def _tiny_slices(ct, organs, slices) -> Examples:
    """Right-kidney slice examples (the kidney lies on slices 2-13) at 16x16 pixels."""
    return examples_from_label_slices(ct, organs, [3], slices=slices, patch_size=[1, 16, 16])


def _run(examples, out, iterations=3) -> tuple[ClassifierTrainResult, list[str]]:
    """Train for ``iterations`` steps, validating after each; the result and the messages."""
    config = ClassifierTrainConfig(
        out, max_time_s=None, max_iters=iterations, seed=0, device="cpu", **_tiny()
    )
    config.validation_every_s = 0.0
    job = train_classifier_job(examples, config)
    messages = []
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration as done:
            return done.value, messages


def test_the_automatic_split_holds_the_kidney_and_keeps_the_best_auc(phantom, tmp_path):
    ct, organs = phantom
    result, messages = _run(_tiny_slices(ct, organs, None), tmp_path / "m")
    # The top block (slices 17-23) holds no kidney; a lower block of neighbours does.
    assert result.metrics["missing_classes"] == []
    assert "no block" not in result.metrics["computed_on"]["description"]
    assert "macro ROC AUC" in messages[-2] and "held-out accuracy" in messages[-2]
    aucs = {e["iteration"]: e["val_auc"] for e in result.history}
    best = max(aucs.values())
    chosen = max(i for i, auc in aucs.items() if auc == best)  # ties keep the later weights
    assert result.kept == (
        f"the weights of iteration {chosen}, with the best held-out macro ROC AUC ({best:.3f})"
    )
    assert load_model(result.best_path).card.training["kept"] == result.kept


def test_a_held_out_block_without_a_class_keeps_the_last_weights_and_says_why(phantom, tmp_path):
    ct, organs = phantom
    # Only slice 13 of 13-23 holds the kidney: no block can hold it and leave it to train on.
    result, messages = _run(_tiny_slices(ct, organs, range(13, 24)), tmp_path / "m")
    lacks = "hold no 'kidney_right' example"
    assert not any("held-out accuracy" in m for m in messages)
    assert sum(lacks in m for m in messages) >= 3  # the opening and every validated step
    assert "last weights will be kept" in messages[1]
    assert "no block of neighbouring slices holds every class" in result.card.training["held_out"]
    assert result.kept.startswith("the last weights") and lacks in result.kept
    assert result.card.training["kept"] == result.kept
    assert result.metrics["missing_classes"] == ["kidney_right"]
    # The kept package holds the last weights, not those of an accuracy on one class.
    _card, kept = load_model_package(result.best_path)
    _card, last = load_model_package(result.last_path)
    for name, weight in last.state_dict().items():
        assert torch.equal(kept.state_dict()[name], weight), name


def test_the_default_name_fits_the_card_with_long_class_names(phantom, tmp_path):
    long = {k: f"{name} of the upper abdomen, left side" for k, name in NAMES.items()}
    long[2] = "spleen of the upper abdomen, left side"
    name = default_model_name(long)
    assert name == (
        "other of the upper abdomen, left side / liver of the upper abdomen, left side and 1 more"
    )
    assert default_model_name(NAMES) == "other / liver"
    assert len(default_model_name({k: "x" * 64 for k in range(9)})) <= LIMITS.name_chars
    ct, organs = phantom
    boxes = [Region((z, 20, 20), (z + 1, 36, 36)) for z in range(6)]
    examples = examples_from_regions(ct, boxes, [0, 1, 2] * 2, long)
    config = ClassifierTrainConfig(tmp_path / "m", max_time_s=None, max_iters=1, **_tiny())
    trained = run_job(train_classifier_job(examples, config))
    assert trained.card.name == name


def test_the_train_settings_are_built_and_pickled_without_torch():
    """In a fresh process (this one has torch): napari builds the config and hands it over."""
    script = (
        "import pickle, sys\n"
        "from napari_medai.core.classification.config import ClassifierTrainConfig\n"
        "config = ClassifierTrainConfig('out', max_time_s=5.0, device='cpu')\n"
        "assert pickle.loads(pickle.dumps(config)) == config\n"
        "print([name for name in ('torch', 'monai') if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_holding_nothing_out_trains_every_step_of_the_budget_and_keeps_the_last(phantom, tmp_path):
    """bench/classify.py's organ run: a step budget, nothing held out, so nothing reads a clock."""
    ct, organs = phantom
    examples = _boxes(ct, organs)
    config = ClassifierTrainConfig(
        tmp_path / "m", max_time_s=None, max_iters=5, test_fraction=0.0, seed=0, **_tiny()
    )
    trained = run_job(train_classifier_job(examples, config))
    assert [entry["iteration"] for entry in trained.history] == [1, 2, 3, 4, 5]
    assert not any("val_auc" in entry for entry in trained.history)
    assert trained.card.training["examples"] == examples.counts()
    assert trained.card.training["held_out"] == "none" and trained.metrics is None
    assert trained.kept == "the last weights (nothing was held out to choose by)"
    _card, kept = load_model_package(trained.best_path)
    _card, last = load_model_package(trained.last_path)
    for name, weight in last.state_dict().items():
        assert torch.equal(kept.state_dict()[name], weight), name
    for wrong in (-0.1, 1.0):
        with pytest.raises(ClassificationError, match="held-out fraction must be at least 0"):
            train_classifier_job(
                examples, ClassifierTrainConfig(tmp_path / "x", test_fraction=wrong)
            )
