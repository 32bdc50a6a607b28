"""DICOM-SEG export and reading, and de-identification, over generated and mutated inputs.

Every case ends in a MedaiError whose message names the file's problem in
words (a substring is checked), or in a correct result checked against
highdicom (what a written SEG holds) or against the mask that was encoded
(what a read SEG gives). A traceback, a silent wrong result or a planted
identifier in a de-identified output fails the case. Inputs are built once per
module from a seeded generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from pydicom.dataset import Dataset

from napari_medai.core.errors import MedaiError
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.dicom_seg import read_dicom_seg
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SHAPE = (5, 14, 12)
ORIGIN_Z, STEP = 40.0, 2.5
SEED = 17
PLANTED = ("Doe^Jane", "SECRET-ID-42", "Hospital Of Planted", "Nested^Person", "NESTED-77")


@dataclass
class Base:
    """The series, its volume, the two-label mask and our SEG of it."""

    folder: Path
    root: Path
    volume: object
    mask: np.ndarray
    seg: Path


def _export(base: Base, array: np.ndarray, out: Path, **dicom) -> Path:
    labels = LabelMap(array, base.volume.geometry, {"name": "mask"}, {})
    config = ExportConfig("dicom-seg", DicomExportConfig(**dicom), sidecar=False)
    run_job(export_job(labels, out, config, {}, base.folder))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("seg_fuzz")
    folder = root / "series"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), step=STEP)
    volume = read_volume(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 3:9, 2:7] = 3
    mask[2:5, 9:13, 7:11] = 7
    made = Base(folder, root, volume, mask, root / "base.dcm")
    _export(made, mask, made.seg)
    return made


def _truth_by_highdicom(out: Path, folder: Path) -> np.ndarray:
    """The label map a written SEG holds, from highdicom alone (values from tracking IDs)."""
    seg = hd.seg.segread(out)
    by_uid = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = round((float(ds.ImagePositionPatient[2]) - ORIGIN_Z) / STEP)
    uids = sorted(by_uid, key=by_uid.get)
    labels = np.zeros(SHAPE, dtype=np.int64)
    for segment in seg.SegmentSequence:
        if int(segment.SegmentNumber) == 0:
            continue
        value = int(str(segment.TrackingID).rsplit(" ", 1)[1])
        pixels = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[int(segment.SegmentNumber)], assert_missing_frames_are_empty=True
        )
        assert not np.any(labels[pixels[..., 0] > 0]), "two segments share voxels"
        labels[pixels[..., 0] > 0] = value
    return labels


# --- export of odd label maps ---------------------------------------------------------------


def _export_cases() -> list[tuple[str, Callable[[], np.ndarray], str]]:
    """(name, label array maker, refusal substring or "" when it must export exactly)."""
    rng = np.random.default_rng(SEED)

    def with_values(values, dtype=np.int64):
        def make():
            array = np.zeros(SHAPE, dtype=dtype)
            for k, value in enumerate(values):
                array[k % SHAPE[0], 2 * k % SHAPE[1] : 2 * k % SHAPE[1] + 2, k % 9 : k % 9 + 3] = (
                    value
                )
            return array

        return make

    def random_labels(count, high):
        def make():
            return rng.integers(0, high, size=SHAPE) * (rng.random(SHAPE) < 0.3)

        return make

    return [
        ("negative one", with_values([2, -1]), "negative values (-1)"),
        ("negative large", with_values([-70000]), "negative values (-70000)"),
        ("int8 negative", with_values([5, -128], np.int8), "negative values (-128)"),
        ("above 16 bits", with_values([1, 70000]), "above 65535 (70000)"),
        ("just above 16 bits", with_values([65536]), "above 65535 (65536)"),
        ("three billion", with_values([3_000_000_000]), "above 65535 (3000000000)"),
        ("many too large", with_values(list(range(70001, 70008))), "and 2 more"),
        ("all zero", with_values([]), "empty"),
        ("one voxel", lambda: np.pad(np.ones((1, 1, 1), np.uint8), [(2, 2), (6, 7), (5, 6)]), ""),
        ("largest value", with_values([65535, 1], np.uint16), ""),
        ("uint32 small values", with_values([9, 4], np.uint32), ""),
        ("forty labels", random_labels(40, 41), ""),
        ("random 300 values", random_labels(300, 300), ""),
        (
            "one full slab",
            lambda: np.pad(np.full((1, *SHAPE[1:]), 2, np.uint8), [(4, 0), (0, 0), (0, 0)]),
            "",
        ),
    ]


EXPORTS = _export_cases()


EXPORT_RUNS = [
    (*case, compact) for case in EXPORTS for compact in ([False] if case[2] else [False, True])
]


@pytest.mark.parametrize(
    ("name", "make", "match", "compact"),
    EXPORT_RUNS,
    ids=[f"{c[0]} {'labelmap' if c[3] else 'binary'}" for c in EXPORT_RUNS],
)
def test_odd_label_maps_export_exactly_or_are_refused(base, tmp_path, name, make, match, compact):
    array = make()
    out = tmp_path / "out.dcm"
    if match:
        with pytest.raises(MedaiError) as raised:
            _export(base, array, out, compact=compact)
        assert match in str(raised.value)
        assert not out.exists()
        return
    _export(base, array, out, compact=compact)
    np.testing.assert_array_equal(_truth_by_highdicom(out, base.folder), array)
    labels = read_dicom_seg(out, base.volume)
    np.testing.assert_array_equal(labels.array, array)
    assert labels.metadata["warnings"] == []


# --- reading mutated and generated SEGs -------------------------------------------------------


def _segments(ds: Dataset) -> list[Dataset]:
    return list(ds.SegmentSequence)


def _frames(ds: Dataset) -> list[Dataset]:
    return list(ds.PerFrameFunctionalGroupsSequence)


def _set_number(ds: Dataset, old: int, new: int) -> None:
    """Renumber a segment consistently (its list entry and its frames)."""
    for segment in _segments(ds):
        if int(segment.SegmentNumber) == old:
            segment.SegmentNumber = new
    for frame in _frames(ds):
        item = frame.SegmentIdentificationSequence[0]
        if int(item.ReferencedSegmentNumber) == old:
            item.ReferencedSegmentNumber = new


def _shift(ds: Dataset, offset: tuple[float, float, float]) -> None:
    for frame in _frames(ds):
        plane = frame.PlanePositionSequence[0]
        plane.ImagePositionPatient = [
            float(v) + d for v, d in zip(plane.ImagePositionPatient, offset)
        ]


@dataclass
class Mutation:
    """A change to our two-label SEG and what reading it must give."""

    name: str
    change: Callable[[Dataset], None]
    match: str = ""  # refusal substring; "" means it opens
    truth: Callable[[np.ndarray], np.ndarray] | None = None  # expected labels from the mask
    warns: str = ""


def _mutations() -> list[Mutation]:
    rng = random.Random(SEED)
    same = lambda mask: mask  # noqa: E731
    by_number = lambda mask: np.select([mask == 3, mask == 7], [1, 2], 0)  # noqa: E731
    cases = [
        Mutation("segment number 0", lambda ds: _set_number(ds, 1, 0), "numbered 0"),
        Mutation(
            "duplicate segment numbers",
            lambda ds: setattr(_segments(ds)[1], "SegmentNumber", 1),
            "listed twice",
        ),
        Mutation(
            "segment list loses one",
            lambda ds: ds.SegmentSequence.pop(),
            "does not describe",
        ),
        Mutation(
            "frame names a missing segment",
            lambda ds: setattr(
                _frames(ds)[-1].SegmentIdentificationSequence[0], "ReferencedSegmentNumber", 9
            ),
            "segment 9",
        ),
        Mutation("no segment list", lambda ds: delattr(ds, "SegmentSequence"), "lists no segments"),
        Mutation(
            "unknown segmentation type",
            lambda ds: setattr(ds, "SegmentationType", "PROBABILITY"),
            "not BINARY, FRACTIONAL or LABELMAP",
        ),
        Mutation(
            "fractional without maximum",
            lambda ds: setattr(ds, "SegmentationType", "FRACTIONAL"),
            "no maximum fractional value",
        ),
        Mutation(
            "frame without position",
            lambda ds: delattr(_frames(ds)[2], "PlanePositionSequence"),
            "has no position",
        ),
        Mutation(
            "no per-frame groups",
            lambda ds: delattr(ds, "PerFrameFunctionalGroupsSequence"),
            "describes 0",
        ),
        Mutation("rows one more", lambda ds: setattr(ds, "Rows", ds.Rows + 1), "need"),
        Mutation("columns one fewer", lambda ds: setattr(ds, "Columns", ds.Columns - 1), "need"),
        Mutation("no pixel data", lambda ds: delattr(ds, "PixelData"), "no pixel data"),
        Mutation(
            "frame count is text",
            lambda ds: ds.__setitem__(0x00280008, pydicom.DataElement(0x00280008, "LO", "many")),
            "header is damaged",
        ),
        Mutation(
            "segment number is text",
            lambda ds: _segments(ds)[0].__setitem__(
                0x0062_0004, pydicom.DataElement(0x0062_0004, "LO", "one")
            ),
            "header is damaged",
        ),
        Mutation(
            "huge segment number",
            lambda ds: _set_number(ds, 2, 65535),
            truth=same,
        ),
        Mutation(
            "huge segment number, no tracking IDs",
            lambda ds: (
                _set_number(ds, 2, 65535),
                [delattr(s, "TrackingID") for s in _segments(ds)],
            ),
            truth=lambda mask: np.select([mask == 3, mask == 7], [1, 65535], 0),
        ),
        Mutation(
            "31-digit label value",
            lambda ds: setattr(_segments(ds)[0], "TrackingID", "napari-medai label " + "9" * 31),
            truth=by_number,
            warns="segment numbers are used",
        ),
        Mutation(
            "repeated label values",
            lambda ds: setattr(_segments(ds)[1], "TrackingID", _segments(ds)[0].TrackingID),
            truth=by_number,
            warns="repeated",
        ),
        Mutation(
            "label value zero",
            lambda ds: setattr(_segments(ds)[0], "TrackingID", "napari-medai label 0"),
            truth=by_number,
            warns="out of range",
        ),
        Mutation(
            "foreign tracking IDs",
            lambda ds: [setattr(s, "TrackingID", "lesion A") for s in _segments(ds)],
            truth=by_number,
        ),
        Mutation(
            "every frame 2 m away",
            lambda ds: _shift(ds, (2000.0, 0.0, 0.0)),
            "outside the scan",
        ),
    ]
    for k in range(3):
        delta = rng.randint(1, 4)
        cases.append(
            Mutation(
                f"frame count +{delta} ({k})",
                lambda ds, d=delta: setattr(ds, "NumberOfFrames", int(ds.NumberOfFrames) + d),
                "frame(s) but describes",
            )
        )
        cut = rng.randint(2, 30)
        cases.append(
            Mutation(
                f"pixel data {cut} bytes short",
                lambda ds, c=cut: setattr(ds, "PixelData", ds.PixelData[: -c - (c % 2)]),
                "need",
            )
        )
        far = rng.uniform(300.0, 5000.0) * rng.choice([-1, 1])
        cases.append(
            Mutation(
                f"frames {far:.0f} mm off", lambda ds, f=far: _shift(ds, (0.0, f, f)), "outside"
            )
        )
        small = rng.uniform(-0.004, 0.004)
        cases.append(
            Mutation(
                f"frames {small:.4f} mm off", lambda ds, s=small: _shift(ds, (s, s, s)), truth=same
            )
        )
    return cases


MUTATIONS = _mutations()


def _check_refusal(path: Path, volume, match: str) -> None:
    with pytest.raises(MedaiError) as raised:
        read_dicom_seg(path, volume)
    message = str(raised.value)
    assert match in message and path.name in message, message


@pytest.mark.parametrize("case", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutated_segs_are_refused_in_words_or_read_right(base, tmp_path, case):
    ds = pydicom.dcmread(base.seg)
    case.change(ds)
    path = tmp_path / "mutated.dcm"
    ds.save_as(path)
    if case.match:
        _check_refusal(path, base.volume, case.match)
        return
    labels = read_dicom_seg(path, base.volume)
    np.testing.assert_array_equal(labels.array, case.truth(base.mask))
    warnings = " ".join(labels.metadata["warnings"])
    assert case.warns in warnings if case.warns else warnings == ""


def _highdicom_seg(base: Base, pixels: np.ndarray, kind: str, count: int, out: Path) -> Path:
    """A SEG made by highdicom directly (another writer than ours) on the series."""
    from pydicom.sr.codedict import codes

    sources = []
    for path in base.folder.iterdir():
        ds = pydicom.dcmread(path)
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
            setattr(ds, keyword, ds.get(keyword, ""))
        ds.AccessionNumber = ds.ReferringPhysicianName = ""
        sources.append(ds)
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"structure {n}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="MANUAL",
        )
        for n in range(1, count + 1)
    ]
    hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="another writer",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        max_fractional_value=200,
    ).save_as(out)
    return out


GENERATED = [("overlap", seed) for seed in range(5)] + [("fractional", seed) for seed in range(5)]


@pytest.mark.parametrize(("kind", "seed"), GENERATED, ids=[f"{k} {s}" for k, s in GENERATED])
def test_generated_overlapping_and_fractional_segs(base, tmp_path, kind, seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 5))
    if kind == "overlap":
        pixels = rng.random((*SHAPE, count)) < 0.25
        pixels[0, 0, 0, :2] = True  # at least one shared voxel
        truth = np.zeros(SHAPE, dtype=np.uint8)
        for n in range(count):
            truth[pixels[..., n]] = n + 1  # the higher segment number wins
        out = _highdicom_seg(base, pixels, "BINARY", count, tmp_path / "overlap.dcm")
        labels = read_dicom_seg(out, base.volume)
        for low in range(count):
            for high in range(low + 1, count):
                shared = int(np.sum(pixels[..., low] & pixels[..., high]))
                phrase = f'segments {low + 1} "structure {low + 1}" and {high + 1}'
                said = [w for w in labels.metadata["warnings"] if phrase in w]
                assert (said != []) == (shared > 0)
                if shared:
                    assert f"in {shared} voxel(s); where segments overlap, the highest" in said[0]
    else:
        pixels = rng.random((*SHAPE, count)).astype(np.float32)
        stored = np.round(pixels * 200) / 200  # what a maximum fractional value of 200 keeps
        truth = np.zeros(SHAPE, dtype=np.uint8)
        for n in range(count):
            truth[stored[..., n] >= 0.5] = n + 1
        out = _highdicom_seg(base, pixels, "FRACTIONAL", count, tmp_path / "fraction.dcm")
        labels = read_dicom_seg(out, base.volume)
        assert "FRACTIONAL" in labels.metadata["warnings"][0]
    np.testing.assert_array_equal(labels.array, truth)


# --- de-identification ---------------------------------------------------------------------


def _plant(folder: Path, where: str) -> None:
    """Plant identifiers at the top level and in one kind of nested place."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "scanner maker"  # highdicom then copies the acquisition equipment
        ds.InstitutionName = "Hospital Of Planted"
        item = Dataset()
        if where == "equipment":
            ds.StationName = "NESTED-77"
        elif where == "patient group":
            item.PatientID, item.PatientName = "NESTED-77", "Nested^Person"
            ds.GroupOfPatientsIdentificationSequence = [item]
        elif where == "physician":
            item.InstitutionName, item.InstitutionAddress = "Hospital Of Planted", "NESTED-77"
            ds.ReferringPhysicianIdentificationSequence = [item]
        elif where == "other IDs":
            item.PatientID = "NESTED-77"
            ds.OtherPatientIDsSequence = [item]
            ds.OtherPatientNames = "Nested^Person"
        elif where == "private":
            block = ds.private_block(0x0011, "PLANTED", create=True)
            block.add_new(0x01, "LO", "NESTED-77")
        ds.save_as(path)


DEID = ["equipment", "patient group", "physician", "other IDs", "private"]


@pytest.mark.parametrize("where", DEID)
@pytest.mark.parametrize("compact", [False, True], ids=["binary", "labelmap"])
def test_deidentified_seg_holds_no_planted_identifier(tmp_path, where, compact):
    folder = tmp_path / "series"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), step=STEP)
    _plant(folder, where)
    volume = read_volume(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    made = Base(folder, tmp_path, volume, mask, tmp_path / "unused.dcm")
    labels = LabelMap(mask, volume.geometry, {"name": "Doe^Jane SECRET-ID-42"}, {})
    out = tmp_path / "seg.dcm"
    config = ExportConfig("dicom-seg", DicomExportConfig(deidentify=True, compact=compact))
    run_job(export_job(labels, out, config, {}, folder))
    raw = out.read_bytes().decode("latin-1").lower()
    assert [p for p in PLANTED if p.lower() in raw] == []
    dataset = pydicom.dcmread(out)
    for element in dataset.iterall():
        if element.VR != "SQ":
            assert not any(p.lower() in str(element.value).lower() for p in PLANTED), element
    np.testing.assert_array_equal(_truth_by_highdicom(out, made.folder), mask)
