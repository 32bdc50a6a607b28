"""Scoring a classifier on a held-out set the user picks: labelled slices or classed boxes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medai.cli import main
from napari_medai.core.classification import inference
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifierTrainConfig,
    Region,
)
from napari_medai.core.classification.evaluation import evaluate_job
from napari_medai.core.classification.examples import examples_from_label_slices
from napari_medai.core.classification.heldout import HeldOutSet, parse_slices, slices_text
from napari_medai.core.classification.metrics import classification_metrics
from napari_medai.core.classification.report import save_metrics
from napari_medai.core.classification.training import train_classifier_job
from napari_medai.core.errors import MedaiError
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import volume_to_sitk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}
SPLEEN = 2


def tiny_model(names: dict[int, str]) -> LoadedModel:
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny",
        architecture="DenseNet",
        architecture_args=TINY,
        label_names=names,
        patch_size=[1, 16, 16],
        task="classification",
        spatial_dims=2,
        intensity={"kind": "window", "low": -160.0, "high": 240.0},
    )
    return LoadedModel(card, build_network(card).eval(), "tiny", "")


def spleen_slices(organs, slices=None) -> HeldOutSet:
    return HeldOutSet("ct", "organs", labels=organs, values=[SPLEEN], slices=slices)


def test_slice_text_round_trips():
    assert parse_slices("") is None
    assert parse_slices("15-17, 3") == [3, 15, 16, 17]
    assert slices_text([3, 15, 16, 17]) == "3, 15-17"
    assert slices_text(range(0, 40, 2)) == "0-38 (20 slices)"
    for bad, why in (("a-3", "'15-29'"), ("7-", "'15-29'"), ("9-2", "backwards")):
        with pytest.raises(ClassificationError, match=why):
            parse_slices(bad)


def test_metrics_on_picked_slices_state_counts_and_what(phantom):
    ct, organs = phantom
    model = tiny_model({0: "no spleen", 1: "spleen"})
    metrics = run_job(evaluate_job(model, ct, spleen_slices(organs, list(range(15, 24)))))
    on = metrics["computed_on"]
    present = (organs.array[15:] == SPLEEN).any((1, 2))
    assert on["cases"] == 9
    assert on["per_class"] == {"no spleen": int((~present).sum()), "spleen": int(present.sum())}
    assert on["description"] == (
        "user-picked: layer 'organs' slices 15-23 along z (label 2 = spleen) of image 'ct'"
    )
    assert on["model"] == "tiny"
    matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == 9 and matrix.sum(1).tolist() == list(on["per_class"].values())


def test_evaluating_a_training_runs_held_out_slices_gives_its_figures(
    phantom, tmp_path, monkeypatch
):
    # One slice per call, whatever this machine's pace (the batch size otherwise follows it).
    monkeypatch.setattr(inference, "TARGET_CALL_S", 0.0)
    ct, organs = phantom
    patch = {"patch_size": [1, 16, 16]}
    training = examples_from_label_slices(ct, organs, [SPLEEN], slices=range(15), **patch)
    validation = examples_from_label_slices(ct, organs, [SPLEEN], slices=range(15, 24), **patch)
    config = ClassifierTrainConfig(tmp_path / "m", max_time_s=None, max_iters=2, seed=0)
    config.architecture_args = TINY
    trained = run_job(train_classifier_job(training, config, validation))
    picked = spleen_slices(organs, list(range(15, 24)))
    metrics = run_job(evaluate_job(load_model(str(trained.best_path)), ct, picked))
    for key in ("accuracy", "macro", "per_class", "confusion_matrix"):
        assert metrics[key] == trained.metrics[key], key
    for name, curve in trained.metrics["roc_curves"].items():
        got = metrics["roc_curves"][name]
        assert (got["fpr"], got["tpr"]) == (curve["fpr"], curve["tpr"]), name
        # Thresholds are probabilities rounded to 6 decimals. Evaluation took one slice per
        # call, training all 9 at once: a batch of another size sums in another order (3e-8
        # apart here), which moved a sixth decimal by one for one training seed in twelve.
        np.testing.assert_allclose(got["thresholds"], curve["thresholds"], rtol=0, atol=1.5e-6)


def test_boxes_by_class_name_and_clear_refusals(phantom):
    ct, organs = phantom
    model = tiny_model({0: "other", 1: "liver"})
    boxes = [Region((z, 20, 20), (z + 1, 36, 36)) for z in (4, 10, 12, 16)]
    picked = HeldOutSet("ct", "rois", regions=boxes, classes=["other", "liver", "other", "liver"])
    picked.slices = [10, 11, 12, 13, 14, 15, 16]
    metrics = run_job(evaluate_job(model, ct, picked))
    on = metrics["computed_on"]
    assert on["cases"] == 3 and on["per_class"] == {"other": 1, "liver": 2}
    assert on["description"] == "user-picked: layer 'rois' boxes on slices 10, 12, 16 of image 'ct'"

    picked.slices = [4, 10]
    picked.classes = ["other", "other", "liver", "liver"]
    with pytest.raises(MedaiError, match="hold no example of class 'liver'.*widen the slice"):
        evaluate_job(model, ct, picked)
    picked.slices = [30]
    with pytest.raises(ClassificationError, match="slice 30 is outside 'ct'"):
        evaluate_job(model, ct, picked)
    picked.slices, picked.classes[0] = None, "kidney"
    with pytest.raises(ClassificationError, match="class 'kidney'.*its classes are other, liver"):
        evaluate_job(model, ct, picked)
    with pytest.raises(ClassificationError, match="needs 1 label value"):
        evaluate_job(model, ct, HeldOutSet("ct", "organs", labels=organs, values=[1, 2]))
    segmenter = LoadedModel(
        ModelCard(**{**model.card.__dict__, "task": "segmentation"}), model.network, "s", ""
    )
    with pytest.raises(ClassificationError, match="not a classifier"):
        evaluate_job(segmenter, ct, spleen_slices(organs))


def test_cli_evaluates_picked_slices_and_boxes(phantom, tmp_path, capsys):
    ct, organs = phantom
    image, labels = tmp_path / "ct.nii.gz", tmp_path / "organs.nii.gz"
    sitk.WriteImage(volume_to_sitk(ct), str(image))
    write_label_map(organs, labels)
    model = tiny_model({0: "no spleen", 1: "spleen"})
    package = save_model_package(tmp_path / "spleen", model.card, model.network)
    argv = ["evaluate-classifier", str(image), "--model", str(package), "--labels", str(labels)]
    argv += ["--label-values", "2", "--slices", "15-23", "--out", str(tmp_path / "held")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["computed_on"]["cases"] == 9 and report["computed_on"]["model"] == "tiny"
    assert "file 'organs.nii.gz' slices 15-23 along z" in report["computed_on"]["description"]
    assert "roc_curves" in json.loads((tmp_path / "held.json").read_text())
    assert (tmp_path / "held.csv").is_file()
    assert main(argv) == 2 and "exists" in capsys.readouterr().err

    boxes = [{"start": [z, 20, 20], "stop": [z + 1, 36, 36], "class": z % 2} for z in (4, 5, 9)]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    argv = ["evaluate-classifier", str(image), "--model", str(package)]
    assert main([*argv, "--boxes", str(tmp_path / "boxes.json")]) == 0
    assert json.loads(capsys.readouterr().out)["computed_on"]["per_class"] == {
        "no spleen": 1,
        "spleen": 2,
    }
    boxes[0]["class"] = 7
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert main([*argv, "--boxes", str(tmp_path / "boxes.json")]) == 2
    assert "box class 7 is not one of the model's classes 0-1" in capsys.readouterr().err


def test_a_held_out_set_without_a_class_says_what_cannot_be_computed(tmp_path):
    """Every case 'not spleen', all called so: accuracy 1.0 judges nothing; it must say so."""
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    names = {0: "no spleen", 1: "spleen"}
    metrics = classification_metrics([0, 0, 0], scores, names, "slice positions 17-23")
    assert metrics["accuracy"] == 1.0 and metrics["missing_classes"] == ["spleen"]
    spleen = metrics["per_class"]["spleen"]
    assert spleen["recall"] is None and spleen["roc_auc"] is None and spleen["precision"] is None
    assert metrics["macro"]["roc_auc"] is None
    (note,) = metrics["notes"]
    assert "no 'spleen' example" in note and "cannot judge the classifier" in note
    _json, csv_path = save_metrics(metrics, tmp_path / "m")
    assert f"note,{note}" in csv_path.read_text().replace('"', "")


def test_a_class_never_predicted_has_no_precision_and_counts_as_zero_in_the_macro():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])  # everything called class 0
    metrics = classification_metrics([0, 1, 1], scores, {0: "other", 1: "liver"}, "x")
    assert metrics["per_class"]["liver"]["precision"] is None
    assert metrics["per_class"]["liver"]["recall"] == 0.0  # two livers, none found: computable
    assert metrics["missing_classes"] == []
    assert metrics["notes"] == [
        "no case was called 'liver', so its precision cannot be computed "
        "(it counts as 0 in the macro average)"
    ]
    # Precision of 'other' is 1/3; the never-predicted 'liver' counts 0, as scikit-learn does.
    assert metrics["macro"]["precision"] == round((1 / 3 + 0) / 2, 4)


def test_slice_classes_carry_the_label_names(phantom):
    ct, organs = phantom
    named = examples_from_label_slices(ct, organs, [SPLEEN], patch_size=[1, 16, 16])
    assert named.class_names == {0: "no spleen", 1: "spleen"}
    unnamed = replace(organs, label_names={})
    unnamed = examples_from_label_slices(ct, unnamed, [SPLEEN], patch_size=[1, 16, 16])
    assert unnamed.class_names == {0: "no label 2", 1: "label 2"}


def test_a_label_named_otherwise_than_the_class_is_refused(phantom):
    ct, organs = phantom
    model = tiny_model({0: "no liver", 1: "liver"})
    with pytest.raises(ClassificationError, match="label 2 of 'organs' is 'spleen'.*'liver'"):
        evaluate_job(model, ct, spleen_slices(organs))
