"""Hostile and odd inputs to ``napari-medai evaluate``: each ends in a refusal or a right score.

Label files are written with nibabel (NRRD with SimpleITK, for 3D Slicer's segment names),
beside hand-written sidecars, from a seeded generator. A case passes when the CLI either exits
2 with one line naming the problem (``refusal``), or prints strict JSON (no NaN) whose label
pairs are the expected ones, matched the expected way, with every Dice equal to the one numpy
computes on the arrays nibabel reads. A traceback fails the case (the CLI lets anything but a
MedaiError through), and so does the patient name planted in every sidecar appearing anywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.cli import main

SHAPE = (24, 20, 8)  # nibabel's (x, y, z)
#: Planted in every sidecar's provenance: it must never reach the output.
PATIENT = "DOE^JANE"
#: Seconds one evaluation of these 3,840-voxel maps may take, whatever its label values:
#: milliseconds of work, so this catches a loop over every value up to the maximum (35 s
#: before for 1e8) while leaving room for a slow shared CPU.
CASE_LIMIT_S = 5.0
SEED = 17


@dataclass
class Case:
    """The CLI arguments (file names in the case folder) and what must come out."""

    argv: list[str]
    refusal: str = ""
    matching: str = ""
    #: Expected (predicted value, reference value) pairs; None: not checked (resampled grids).
    pairs: list[tuple[int, int]] | None = None
    warning: str = ""
    files: dict[str, np.ndarray] = field(default_factory=dict)


def _affine(offset_mm: tuple[float, float, float] = (0, 0, 0), spacing=(1.5, 1.5, 3.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = offset_mm
    return affine


def _save(folder: Path, name: str, array: np.ndarray, affine=None) -> str:
    affine = _affine() if affine is None else affine
    nibabel.save(nibabel.Nifti1Image(array, affine, dtype=array.dtype), folder / name)
    return name


def _sidecar(folder: Path, name: str, label_names: object) -> None:
    """A sidecar as our writer lays it out (``label_names`` may be junk on purpose)."""
    stem = name.split(".")[0]
    text = {"label_names": label_names, "provenance": {"patient_name": PATIENT}}
    (folder / f"{stem}.json").write_text(json.dumps(text))


def _organs(rng: np.random.Generator, values: list[int], dtype=np.uint8) -> np.ndarray:
    """Random boxes, one per value, in a (x, y, z) array; later boxes cover earlier ones."""
    array = np.zeros(SHAPE, dtype=dtype)
    for value in values:
        low = [int(rng.integers(0, n - 3)) for n in SHAPE]
        size = [int(rng.integers(2, max(3, n // 2))) for n in SHAPE]
        array[tuple(slice(lo, lo + s) for lo, s in zip(low, size, strict=True))] = value
    return array


def _perturbed(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    """A prediction: the reference shifted a voxel along a random axis, a few voxels wrong."""
    out = np.roll(array, int(rng.choice([-1, 1])), axis=int(rng.integers(0, 3)))
    flips = rng.random(out.shape) < 0.02
    out[flips] = rng.choice(np.unique(array), size=int(flips.sum()))
    return out


def _present(*arrays: np.ndarray) -> list[int]:
    return sorted({int(v) for a in arrays for v in np.unique(a) if v})


def _pair_case(folder: Path, rng: np.random.Generator, prefix: str, values, dtype) -> Case:
    """Unnamed maps of ``dtype`` holding ``values``: matched by value over both maps' values."""
    reference = _organs(rng, values, dtype)
    prediction = _perturbed(rng, reference)
    ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
    pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
    pairs = [(v, v) for v in _present(prediction, reference)]
    return Case([pred, ref], matching="by value", pairs=pairs)


def _huge(value: int, dtype) -> Callable[[Path, np.random.Generator, str], Case]:
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        return _pair_case(folder, rng, prefix, [1, 3, value], dtype)

    return build


def _random_values(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
    dtype = rng.choice([np.uint8, np.int16, np.uint16, np.int32, np.uint32])
    top = min(np.iinfo(dtype).max, 2**31 - 1)
    values = sorted({int(v) for v in rng.integers(1, top, size=int(rng.integers(1, 6)))})
    return _pair_case(folder, rng, prefix, values, dtype)


def _negative(value: int, side: str, dtype=np.int16):
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        reference = _organs(rng, [1, 2], dtype)
        prediction = reference.copy()
        (prediction if side == "prediction" else reference)[0, 0, 0] = value
        pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        return Case([pred, ref], refusal=f"{side} ({prefix}_")

    return build


def _tolerance(text: str, refused: bool):
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        case = _pair_case(folder, rng, prefix, [1, 2], np.uint8)
        case.argv.append(f"--tolerance={text}")
        if refused:
            return Case(case.argv, refusal="tolerance must be a distance above 0 mm")
        return case

    return build


def _moved(offset_mm: tuple[float, float, float], refused: bool, spacing=(1.5, 1.5, 3.0)):
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        reference = _organs(rng, [1, 2], np.uint8)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        pred = _save(folder, f"{prefix}_pred.nii.gz", reference, _affine(offset_mm, spacing))
        if refused:
            return Case([pred, ref], refusal="grid does not overlap")
        return Case([pred, ref], matching="by value", warning="resampled onto the reference grid")

    return build


def _flat(pred_2d: bool, ref_2d: bool):
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        volume = _organs(rng, [1, 2], np.uint8)
        reference = volume[:, :, 3] if ref_2d else volume
        prediction = _perturbed(rng, volume)
        prediction = prediction[:, :, 3] if pred_2d else prediction
        pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        if pred_2d != ref_2d:
            return Case([pred, ref], refusal="score a slice against a slice")
        pairs = [(v, v) for v in _present(prediction, reference)]
        return Case([pred, ref], matching="by value", pairs=pairs)

    return build


def _renumbered(pred_names: dict, ref_names: dict, matching: str, warning: str = ""):
    """The reference numbered by ``ref_names``, the prediction by ``pred_names`` (by name)."""

    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        ref_values = sorted(ref_names)
        reference = _organs(rng, ref_values, np.uint8)
        by_name = {_key(name): value for value, name in pred_names.items()}
        relabel = {value: by_name.get(_key(name), 0) for value, name in ref_names.items()}
        prediction = np.zeros_like(reference)
        for ref_value, pred_value in relabel.items():
            prediction[_perturbed(rng, reference) == ref_value] = pred_value
        pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        _sidecar(folder, pred, {str(k): v for k, v in pred_names.items()})
        _sidecar(folder, ref, {str(k): v for k, v in ref_names.items()})
        present_pred, present_ref = _present(prediction), _present(reference)
        if matching == "by value":
            pairs = [(v, v) for v in _present(prediction, reference)]
        else:
            pairs = [
                (p, r)
                for r, p in sorted(relabel.items())
                if p and (p in present_pred or r in present_ref)
            ]
        return Case([pred, ref], matching=matching, pairs=pairs, warning=warning)

    return build


def _key(name: str) -> str:
    """A name compared the way a person would: case, spaces and underscores aside."""
    return name.casefold().replace("_", " ")


def _junk_sidecar(junk: object):
    """A prediction sidecar whose names are junk: no names, so matched by value."""

    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        case = _pair_case(folder, rng, prefix, [1, 2], np.uint8)
        _sidecar(folder, case.argv[0], junk)
        _sidecar(folder, case.argv[1], {"1": "liver", "2": "spleen"})
        case.warning = "the prediction carries no label names"
        return case

    return build


def _slicer_nrrd(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
    """A .seg.nrrd whose segment names (liver = 7) pair with a sidecar's (liver = 1)."""
    reference = _organs(rng, [7, 4], np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(reference.transpose(2, 1, 0)))
    image.SetSpacing((1.5, 1.5, 3.0))
    for index, (value, name) in enumerate([(7, "Liver"), (4, "Spleen")]):
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
    ref = f"{prefix}_ref.seg.nrrd"
    sitk.WriteImage(image, str(folder / ref))
    prediction = np.where(reference == 7, 1, 0).astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(prediction.transpose(2, 1, 0)))
    image.SetSpacing((1.5, 1.5, 3.0))
    pred = f"{prefix}_pred.nrrd"
    sitk.WriteImage(image, str(folder / pred))
    _sidecar(folder, pred, {"1": "liver"})
    return Case([pred, ref], matching="by name", pairs=[(1, 7)], warning="Spleen (4)")


def _empty(pred_empty: bool, ref_empty: bool):
    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        organs = _organs(rng, [2], np.uint8)
        empty = np.zeros(SHAPE, dtype=np.uint8)
        prediction, reference = (empty if pred_empty else organs), (empty if ref_empty else organs)
        pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        pairs = [(v, v) for v in _present(prediction, reference)]
        warning = "both label maps are empty" if pred_empty and ref_empty else ""
        return Case([pred, ref], matching="by value", pairs=pairs, warning=warning)

    return build


def _one_voxel(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
    dot = np.zeros((1, 1, 1), dtype=np.uint8)
    dot[0, 0, 0] = 9
    pred = _save(folder, f"{prefix}_pred.nii.gz", dot)
    ref = _save(folder, f"{prefix}_ref.nii.gz", dot.copy())
    return Case([pred, ref], matching="by value", pairs=[(9, 9)])


def _float_labels(fraction: bool):
    """Float files: whole values open as labels, a fraction is refused by the reader."""

    def build(folder: Path, rng: np.random.Generator, prefix: str) -> Case:
        reference = _organs(rng, [1, 2], np.uint8)
        prediction = _perturbed(rng, reference).astype(np.float32) + (0.5 if fraction else 0.0)
        pred = _save(folder, f"{prefix}_pred.nii.gz", prediction)
        ref = _save(folder, f"{prefix}_ref.nii.gz", reference)
        if fraction:
            return Case([pred, ref], refusal=pred)
        pairs = [(v, v) for v in _present(prediction.astype(np.int64), reference)]
        return Case([pred, ref], matching="by value", pairs=pairs)

    return build


TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
BUILDERS: dict[str, Callable[[Path, np.random.Generator, str], Case]] = {
    "huge_2_31": _huge(2**31 - 1, np.int32),
    "huge_1e8": _huge(100_000_000, np.int32),
    "huge_uint32_max": _huge(2**32 - 1, np.uint32),
    "huge_int64_max": _huge(2**63 - 1, np.int64),
    "huge_65536": _huge(65536, np.int32),
    "max_uint16": _huge(65535, np.uint16),
    "negative_pred_-1": _negative(-1, "prediction"),
    "negative_pred_int16_min": _negative(-32768, "prediction"),
    "negative_ref_-5": _negative(-5, "reference", np.int32),
    "negative_pred_int8": _negative(-2, "prediction", np.int8),
    "tolerance_nan": _tolerance("nan", True),
    "tolerance_-1": _tolerance("-1", True),
    "tolerance_0": _tolerance("0", True),
    "tolerance_inf": _tolerance("inf", True),
    "tolerance_-inf": _tolerance("-inf", True),
    "tolerance_tiny": _tolerance("1e-9", False),
    "tolerance_huge": _tolerance("1e9", False),
    "moved_1m_x": _moved((1000.0, 0, 0), True),
    "moved_1m_z": _moved((0, 0, -1000.0), True),
    "moved_just_outside": _moved((0, 31.0, 0), True),
    "moved_10mm": _moved((10.0, 0, 0), False),
    "finer_grid": _moved((0, 0, 0), False, spacing=(0.75, 0.75, 1.5)),
    "pred_2d_ref_3d": _flat(True, False),
    "pred_3d_ref_2d": _flat(False, True),
    "both_2d": _flat(True, True),
    "by_name_totalseg_liver": _renumbered({1: "liver"}, TOTALSEG, "by name", "spleen (1)"),
    "by_name_permuted": _renumbered(
        {3: "liver", 1: "spleen", 2: "kidney_left"}, TOTALSEG, "by name", "kidney_right (2)"
    ),
    "by_name_case_and_spaces": _renumbered({4: "Kidney Left", 9: "LIVER"}, TOTALSEG, "by name"),
    "names_disjoint": _renumbered({1: "leber", 2: "milz"}, {1: "liver", 2: "spleen"}, "by value"),
    "names_duplicate": _renumbered(
        {1: "kidney", 2: "kidney"}, {1: "kidney", 2: "liver"}, "by value", "one name"
    ),
    "names_identical": _renumbered(TOTALSEG, TOTALSEG, "by name"),
    "sidecar_list": _junk_sidecar(["liver", "spleen"]),
    "sidecar_text_keys": _junk_sidecar({"liver": 1}),
    "sidecar_string": _junk_sidecar("liver"),
    "sidecar_empty_names": _junk_sidecar({"1": "", "2": "  "}),
    "slicer_nrrd_names": _slicer_nrrd,
    "both_empty": _empty(True, True),
    "prediction_empty": _empty(True, False),
    "reference_empty": _empty(False, True),
    "one_voxel": _one_voxel,
    "float_whole_values": _float_labels(False),
    "float_fraction": _float_labels(True),
    **{f"random_values_{n}": _random_values for n in range(6)},
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict[str, Case]]:
    """Every case's files, written once from one seed."""
    import monai.metrics.utils  # noqa: F401  (its import takes seconds: not what a case times)

    folder = tmp_path_factory.mktemp("evaluate_fuzz")
    rng = np.random.default_rng(SEED)
    return folder, {name: build(folder, rng, name) for name, build in BUILDERS.items()}


def _no_nan(token: str) -> None:
    raise AssertionError(f"the JSON holds {token}, which is not JSON")


def _dice(prediction: np.ndarray, reference: np.ndarray, pair: tuple[int, int]) -> float:
    a, b = prediction == pair[0], reference == pair[1]
    total = int(a.sum() + b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def _read(path: Path) -> np.ndarray:
    """The array as nibabel reads it (the independent reader; SimpleITK for NRRD)."""
    if path.name.endswith(".nrrd"):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    return np.asanyarray(nibabel.load(path).dataobj)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_evaluate_case(name, cases, capsys):
    folder, built = cases
    case = built[name]
    argv = [str(folder / arg) if not arg.startswith("--") else arg for arg in case.argv]
    started = time.perf_counter()
    code = main(["evaluate", *argv])
    elapsed = time.perf_counter() - started
    printed = capsys.readouterr()
    assert PATIENT not in printed.out + printed.err
    if case.refusal:
        assert code == 2 and printed.out == ""
        [line] = [line for line in printed.err.splitlines() if "error:" in line]
        assert case.refusal in line, line
        return
    assert code == 0, printed.err
    assert elapsed < CASE_LIMIT_S
    summary = json.loads(printed.out, parse_constant=_no_nan)
    assert summary["matching"] == case.matching
    if case.warning:
        assert any(case.warning in warning for warning in summary["warnings"]), summary["warnings"]
    if case.pairs is None:
        return
    scored = [(s["predicted_value"], s["value"]) for s in summary["labels"]]
    assert scored == case.pairs
    prediction, reference = _read(folder / case.argv[0]), _read(folder / case.argv[1])
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.dtype.kind == "f":
        prediction = prediction.astype(np.int64)
    for scores, pair in zip(summary["labels"], case.pairs, strict=True):
        assert scores["dice"] == pytest.approx(_dice(prediction, reference, pair), abs=1e-12)
        defined = scores["predicted_voxels"] and scores["reference_voxels"]
        assert (scores["hd95_mm"] is None) == (not defined)
        assert defined or "undefined" in scores["note"]
