"""RTSTRUCT reading and export over seeded mutations of a written structure set, and odd labels.

Each case ends in a MedaiError whose message names the problem, or in a label map equal
to an independent rasterisation: pydicom's reading of the file, each contour drawn in
the pixel grid of the image it references, from that image's header alone. Damaged
contours must be named (ROI and reason) in the warnings, never dropped silently, and
no patient identifier of the source may reach a message or a de-identified file.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import rotation_iop, write_series
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from skimage.draw import ellipse, polygon2mask

from napari_medai.core.errors import MedaiError
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.rtstruct import read_rtstruct
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SEED = 17
SHAPE = (8, 32, 28)
IOP = rotation_iop((8, -5, 10))
NAMES = {2: "liver", 5: "kidney", 9: "tumour"}
#: The lowest value no ROI uses: where an ROI whose number cannot be a label goes.
FREE = 1
IDENTIFIERS = ("Doe", "SECRET-ID-42")
CONTOUR_DATA = 0x30060050
ROI_NUMBER = 0x30060022
REFERENCED_ROI_NUMBER = 0x30060084
CONTOUR_SEQUENCE = 0x30060040


@dataclass
class Expect:
    """What reading a mutated file must give: a refusal, or labels with a warning."""

    error: str = ""
    #: (item, contour) left out of the independent reading.
    dropped: tuple[int, int] | None = None
    #: item -> label value it is read as (default: its ROI number).
    labels: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=lambda: dict(NAMES))
    #: Text one warning must hold, and the reason it must give too.
    warning: str = ""
    reason: str = ""


@dataclass
class Case:
    path: Path
    expect: Expect
    expected: np.ndarray | None = None


def _raw(dataset: Dataset, tag: int, vr: str, text: str) -> None:
    """Set an element's bytes as written, bypassing pydicom's validation (damaged values)."""
    encoded = text.encode("latin-1")
    encoded += b" " * (len(encoded) % 2)
    dataset[tag] = RawDataElement(Tag(tag), vr, len(encoded), encoded, 0, False, True)


def _points(contour: Dataset) -> list[str]:
    return [f"{float(v):.3f}" for v in contour.ContourData]


def _title(item: int) -> str:
    value = list(NAMES)[item]
    return f'ROI "{NAMES[value]}" (number {value})'


# Contour damage: each takes the contour and a seeded random source, returns the reason.
def _empty(contour: Dataset, rng: random.Random) -> str:
    _raw(contour, CONTOUR_DATA, "DS", "")
    return "with no points"


def _missing(contour: Dataset, rng: random.Random) -> str:
    del contour[CONTOUR_DATA]
    return "with no points"


def _truncated(contour: Dataset, rng: random.Random) -> str:
    values = _points(contour)
    _raw(contour, CONTOUR_DATA, "DS", "\\".join(values[: -rng.choice((1, 2))]))
    return "not a multiple of 3"


def _token(token: str, reason: str) -> Callable[[Dataset, random.Random], str]:
    def damage(contour: Dataset, rng: random.Random) -> str:
        values = _points(contour)
        values[rng.randrange(len(values))] = token
        _raw(contour, CONTOUR_DATA, "DS", "\\".join(values))
        return reason

    return damage


def _few(count: int) -> Callable[[Dataset, random.Random], str]:
    def damage(contour: Dataset, rng: random.Random) -> str:
        _raw(contour, CONTOUR_DATA, "DS", "\\".join(_points(contour)[: 3 * count]))
        contour.NumberOfContourPoints = count
        return "fewer than 3 points"

    return damage


def _miscounted(contour: Dataset, rng: random.Random) -> str:
    """Points cut off whole (as in a damaged copy) while the stated count stays."""
    _raw(contour, CONTOUR_DATA, "DS", "\\".join(_points(contour)[: -3 * rng.randint(1, 3)]))
    return "Number of Contour Points disagrees"


def _typed(kind: str) -> Callable[[Dataset, random.Random], str]:
    def damage(contour: Dataset, rng: random.Random) -> str:
        contour.ContourGeometricType = kind
        return f"{kind}, which encloses no area"

    return damage


def _unknown_type(contour: Dataset, rng: random.Random) -> str:
    kind = rng.choice(("SPLINE", "CLOSED", "X"))
    contour.ContourGeometricType = kind
    return f'unknown type "{kind}"'


def _shifted(axis: np.ndarray, reason: str) -> Callable[[Dataset, random.Random], str]:
    def damage(contour: Dataset, rng: random.Random) -> str:
        scale = rng.uniform(300, 3000) * rng.choice((-1, 1))
        points = np.array(contour.ContourData, dtype=float).reshape(-1, 3) + scale * axis
        contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
        return reason

    return damage


def _tilted(contour: Dataset, rng: random.Random) -> str:
    points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
    points[rng.randrange(len(points))] += rng.uniform(1.0, 4.0) * np.cross(IOP[:3], IOP[3:])
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    return "between or across the slices"


CONTOUR_DAMAGE = {
    "empty": _empty,
    "missing": _missing,
    "truncated": _truncated,
    "text": _token(" abc", "not numbers"),
    "hex": _token("0x1f", "not numbers"),
    "nan": _token("nan", "NaN or infinite"),
    "inf": _token("-inf", "NaN or infinite"),
    "overflow": _token("1e999", "NaN or infinite"),
    "one point": _few(1),
    "two points": _few(2),
    "miscounted": _miscounted,
    "point type": _typed("POINT"),
    "open": _typed("OPEN_PLANAR"),
    "open nonplanar": _typed("OPEN_NONPLANAR"),
    "unknown type": _unknown_type,
    "off in plane": _shifted(np.array(IOP[:3]), "outside the scan"),
    "off the slices": _shifted(np.cross(IOP[:3], IOP[3:]), "outside the scan"),
    "tilted": _tilted,
}


# ROI-level changes: each takes the dataset, returns the expectation.
def _renumber(number: int | str, why: str) -> Callable[[Dataset], Expect]:
    def change(ds: Dataset) -> Expect:
        _raw(ds.StructureSetROISequence[1], ROI_NUMBER, "IS", str(number))
        _raw(ds.ROIContourSequence[1], REFERENCED_ROI_NUMBER, "IS", str(number))
        names = {2: "liver", FREE: "kidney", 9: "tumour"}
        note = f'ROI "kidney" (number {number}) is read as label {FREE}'
        return Expect(labels={1: FREE}, names=names, warning=note, reason=why)

    return change


def _wide(number: int) -> Callable[[Dataset], Expect]:
    def change(ds: Dataset) -> Expect:
        ds.StructureSetROISequence[2].ROINumber = number
        ds.ROIContourSequence[2].ReferencedROINumber = number
        return Expect(labels={2: number}, names={2: "liver", 5: "kidney", number: "tumour"})

    return change


def _duplicate(ds: Dataset) -> Expect:
    ds.StructureSetROISequence[2].ROINumber = 2
    ds.ROIContourSequence[2].ReferencedROINumber = 2
    return Expect(
        labels={2: FREE},
        names={2: "liver", 5: "kidney", FREE: "tumour"},
        warning='ROI "tumour" (number 2) is read as label 1: ROI "liver" (number 2) has the same',
    )


def _unnamed_reference(ds: Dataset) -> Expect:
    ds.ROIContourSequence[1].ReferencedROINumber = 40
    return Expect(labels={1: 40}, names=dict(NAMES))


def _no_reference(ds: Dataset) -> Expect:
    del ds.ROIContourSequence[0].ReferencedROINumber
    return Expect(labels={0: 0}, warning="contour set 1 of the file names no ROI")


def _no_name(ds: Dataset) -> Expect:
    del ds.StructureSetROISequence[0].ROIName
    return Expect(names={5: "kidney", 9: "tumour"})


def _reordered(ds: Dataset) -> Expect:
    ds.ROIContourSequence = list(reversed(ds.ROIContourSequence))
    return Expect()


def _no_contours(ds: Dataset) -> Expect:
    ds.ROIContourSequence[2].ContourSequence = []
    return Expect(labels={2: 0})


def _padded(ds: Dataset) -> Expect:
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    _raw(contour, CONTOUR_DATA, "DS", " " + "\\".join(f" {v} " for v in _points(contour)))
    return Expect()


def _all_points(ds: Dataset) -> Expect:
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            contour.ContourGeometricType = "POINT"
    return Expect(error='no contour that can be drawn on this scan: ROI "liver" (number 2)')


def _no_structure_list(ds: Dataset) -> Expect:
    del ds.StructureSetROISequence
    return Expect(error="no readable StructureSetROISequence (list of ROIs)")


def _no_contour_list(ds: Dataset) -> Expect:
    del ds.ROIContourSequence
    return Expect(error="no readable ROIContourSequence (contours)")


def _everything_empty(ds: Dataset) -> Expect:
    for item in ds.ROIContourSequence:
        item.ContourSequence = []
    return Expect(labels={0: 0, 1: 0, 2: 0}, warning="holds no contours")


def _junk_contours(seed: int) -> Callable[[Dataset], Expect]:
    """One ROI's contour sequence replaced by seeded random bytes (some framed as an item)."""
    rng = random.Random(seed)
    item = rng.randrange(3)
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(4, 40)))
    if rng.random() < 0.5:
        junk = b"\xfe\xff\x00\xe0" + len(junk).to_bytes(4, "little") + junk

    def change(ds: Dataset) -> Expect:
        target = ds.ROIContourSequence[item]
        _raw(target, CONTOUR_SEQUENCE, "SQ", junk.decode("latin-1"))
        return Expect(labels={item: 0}, warning=_title(item))

    return change


ROI_CHANGES = {
    "number 0": _renumber(0, "ROI number 0 would draw into the background"),
    "number -5": _renumber(-5, "whole number from 1"),
    "number 2**31": _renumber(2**31, "whole number from 1"),
    "number 1.5": _renumber("1.5", "whole number from 1"),
    "number text": _renumber("abc", "whole number from 1"),
    "number 70000": _wide(70000),
    "number 2**31-1": _wide(2**31 - 1),
    "number 256": _wide(256),
    "duplicate number": _duplicate,
    "undeclared number": _unnamed_reference,
    "no reference": _no_reference,
    "no name": _no_name,
    "reordered items": _reordered,
    "one roi without contours": _no_contours,
    "padded coordinates": _padded,
    "all points": _all_points,
    "no roi list": _no_structure_list,
    "no contour list": _no_contour_list,
    "no contours at all": _everything_empty,
    **{f"junk contour sequence {k}": _junk_contours(SEED + k) for k in range(8)},
}

_rng = random.Random(SEED)
#: Every damage once, then seeded random picks; each on a random contour of a random ROI.
CONTOUR_CASES = {
    f"contour {k:02d} {kind}": (kind, _rng.randrange(3), _rng.random(), _rng.randrange(2**32))
    for k, kind in enumerate(
        [*CONTOUR_DAMAGE, *(_rng.choice(sorted(CONTOUR_DAMAGE)) for _ in range(9))]
    )
}
TRUNCATIONS = {f"file cut at {f:.2f}": f for f in sorted(_rng.uniform(0.2, 0.97) for _ in range(4))}


def _blobs(seed: int) -> np.ndarray:
    """Three seeded structures: ellipses over several slices, one with a hole, one split."""
    rng = np.random.default_rng(seed)
    array = np.zeros(SHAPE, dtype=np.uint8)
    for value, parts in ((2, 1), (5, 1), (9, 2)):
        first = int(rng.integers(0, SHAPE[0] - 3))
        for z in range(first, first + int(rng.integers(2, 4))):
            for _ in range(parts):
                centre = rng.uniform((6, 6), (SHAPE[1] - 6, SHAPE[2] - 6))
                rows, columns = ellipse(*centre, *rng.uniform(2.0, 5.5, 2), shape=SHAPE[1:])
                free = array[z, rows, columns] == 0
                array[z, rows[free], columns[free]] = value
    hole = np.argwhere(array == 2)[len(np.argwhere(array == 2)) // 2]
    array[hole[0], hole[1], hole[2]] = 0
    return array


def _headers(files: list[Path]) -> dict[str, tuple[int, Dataset]]:
    headers = {}
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers[str(ds.SOPInstanceUID)] = (k, ds)
    return headers


def _in_image(points: np.ndarray, header: Dataset) -> np.ndarray:
    """World points as (row, column) of an image, from its header alone."""
    iop = np.array(header.ImageOrientationPatient, dtype=float)
    offset = points - np.array(header.ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    return np.column_stack([offset @ iop[3:] / row_spacing, offset @ iop[:3] / column_spacing])


def independent_labels(
    ds: Dataset, headers: dict, labels: dict[int, int], dropped: tuple[int, int] | None
) -> np.ndarray:
    """Each item's closed contours drawn on the images they reference, later items on top."""
    array = np.zeros(SHAPE, dtype=np.uint32)
    for i, item in enumerate(ds.ROIContourSequence):
        value = labels[i] if i in labels else int(item.ReferencedROINumber)
        if value == 0:
            continue
        mask = np.zeros(SHAPE, dtype=bool)
        for c, contour in enumerate(item.ContourSequence):
            if (i, c) == dropped:
                continue
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            k, header = headers[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            mask[k] ^= polygon2mask(SHAPE[1:], _in_image(points, header))
        array[mask] = value
    return array


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The series, its volume, its headers, the mask and the written RTSTRUCT (all seeded)."""
    root = tmp_path_factory.mktemp("rtstruct_fuzz")
    files = write_series(root / "series", np.zeros(SHAPE, dtype=np.int16), iop=IOP)
    volume = read_volume(root / "series")
    labels = LabelMap(_blobs(SEED), volume.geometry, {"name": "Doe^Jane SECRET-ID-42"}, NAMES)
    base = root / "base.dcm"
    run_job(export_job(labels, base, ExportConfig("rtstruct", sidecar=False), {}, root / "series"))
    return root, volume, _headers(files), labels, base


@pytest.fixture(scope="module")
def cases(world) -> dict[str, Case]:
    """Every mutated file, written once, with what reading it must give."""
    root, _, headers, _, base = world
    cases = {}
    for name, (kind, item, where, seed) in CONTOUR_CASES.items():
        ds = pydicom.dcmread(base)
        contours = ds.ROIContourSequence[item].ContourSequence
        index = int(where * len(contours))
        reason = CONTOUR_DAMAGE[kind](contours[index], random.Random(seed))
        expect = Expect(dropped=(item, index), warning=f"{_title(item)}: 1 contour(s) left out")
        cases[name] = _written(root, name, ds, expect, headers, reason)
    for name, change in ROI_CHANGES.items():
        ds = pydicom.dcmread(base)
        cases[name] = _written(root, name, ds, change(ds), headers)
    data = base.read_bytes()
    for name, fraction in TRUNCATIONS.items():
        path = root / f"{name}.dcm"
        path.write_bytes(data[: int(len(data) * fraction)])
        cases[name] = Case(path, Expect(error="truncated"))
    return cases


def _written(
    root: Path, name: str, ds: Dataset, expect: Expect, headers: dict, reason: str = ""
) -> Case:
    path = root / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    if reason:
        expect.reason = reason
    if expect.error:
        return Case(path, expect)
    truth = pydicom.dcmread(path)
    return Case(path, expect, independent_labels(truth, headers, expect.labels, expect.dropped))


def _no_identifier(text: str) -> None:
    assert not any(identifier in text for identifier in IDENTIFIERS), text


@pytest.mark.parametrize("name", [*CONTOUR_CASES, *ROI_CHANGES, *TRUNCATIONS])
def test_a_mutated_structure_set_is_read_right_or_refused(world, cases, name):
    _, volume, _, _, _ = world
    case = cases[name]
    if case.expect.error:
        with pytest.raises(MedaiError) as caught:
            read_rtstruct(case.path, volume)
        assert case.expect.error in str(caught.value)
        _no_identifier(str(caught.value))
        return
    read = read_rtstruct(case.path, volume)
    np.testing.assert_array_equal(read.array, case.expected)
    assert read.label_names == case.expect.names
    notes = read.metadata["warnings"]
    for note in notes:
        _no_identifier(note)
    if case.expect.warning:
        assert any(case.expect.warning in note and case.expect.reason in note for note in notes), (
            notes
        )
    elif not notes:
        return
    else:
        assert all("overlaps ROIs drawn before it" in note for note in notes), notes


# Export of odd label maps: (change to the mask, ROI names, expected refusal text or "").
def _relabel(old: int, new: int, dtype: type) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array = array.astype(dtype)
        array[array == old] = new
        return array

    return change


def _one_voxel(array: np.ndarray) -> np.ndarray:
    single = np.zeros_like(array)
    single[3, 0, SHAPE[2] - 1] = 4
    return single


def _many(array: np.ndarray) -> np.ndarray:
    many = np.zeros(SHAPE, dtype=np.uint16)
    for k in range(40):
        many[k % SHAPE[0], 1 + 3 * (k // SHAPE[0]) : 3 + 3 * (k // SHAPE[0]), 2:9] = 300 + k
    return many


def _border(array: np.ndarray) -> np.ndarray:
    return np.pad(
        np.ones((SHAPE[0], SHAPE[1] - 2, SHAPE[2] - 2), dtype=np.uint8),
        ((0, 0), (1, 1), (1, 1)),
        constant_values=2,
    )


EXPORTS = {
    "export as written": (lambda a: a, False, ""),
    "export de-identified": (lambda a: a, True, ""),
    "export label -1": (_relabel(5, -1, np.int16), False, "-1"),
    "export label -32768": (_relabel(9, -32768, np.int16), False, "-32768"),
    "export label 70000": (_relabel(5, 70000, np.uint32), False, ""),
    "export label 2**31-1": (_relabel(9, 2**31 - 1, np.int64), False, ""),
    "export label 2**31": (_relabel(9, 2**31, np.int64), False, "2147483648"),
    "export label 3e9": (_relabel(2, 3_000_000_000, np.uint32), False, "3000000000"),
    "export one voxel on the edge": (_one_voxel, False, ""),
    "export all zero": (lambda a: np.zeros_like(a), False, "empty"),
    "export 40 labels": (_many, False, ""),
    "export touching the border": (_border, False, ""),
}


@pytest.mark.parametrize("name", EXPORTS)
def test_an_odd_label_map_exports_to_a_file_read_back_the_same_or_is_refused(world, tmp_path, name):
    root, volume, headers, labels, _ = world
    change, deidentify, error = EXPORTS[name]
    array = change(labels.array.copy())
    names = {int(v): f"structure {v}" for v in np.unique(array) if v != 0}
    odd = LabelMap(array, volume.geometry, dict(labels.metadata), names)
    out = tmp_path / "rt.dcm"
    config = ExportConfig("rtstruct", DicomExportConfig(deidentify=deidentify), sidecar=False)
    if error:
        with pytest.raises(MedaiError) as caught:
            run_job(export_job(odd, out, config, {}, root / "series"))
        assert error in str(caught.value)
        _no_identifier(str(caught.value))
        assert not out.exists()
        return
    run_job(export_job(odd, out, config, {}, root / "series"))
    if deidentify:
        _no_identifier(out.read_bytes().decode("latin-1"))
    ds = pydicom.dcmread(out)
    assert {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence} == names
    np.testing.assert_array_equal(independent_labels(ds, headers, {}, None), array)
    read = read_rtstruct(out, volume)
    np.testing.assert_array_equal(read.array, array)
    assert read.label_names == names and read.metadata["warnings"] == []
