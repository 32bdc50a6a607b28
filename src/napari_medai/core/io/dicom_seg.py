"""DICOM-SEG out and back in, with highdicom.

A label map on the grid of a DICOM series becomes one segmentation object
(BINARY, or LABELMAP with JPEG-LS when asked to be compact) referencing every
source instance: one segment per label, with its name, colour and algorithm
type (MANUAL for painted masks, AUTOMATIC or SEMIAUTOMATIC naming the model
when one made it). The label value is kept as the segment's
Tracking ID, so reading it back restores the original values. Reading maps the
segments back onto the referenced scan's grid in world space.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from napari_medai import __version__
from napari_medai.core.errors import ExportError, UnreadableFileError
from napari_medai.core.files import atomic_write
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom_export import DicomExportConfig, algorithm_of
from napari_medai.core.io.dicom_source import SourceSeries, deidentify, match_slices
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap, Volume

#: Tracking ID that carries the label value through a round trip.
_TRACKING_PREFIX = "napari-medai label "
_TRACKING = re.compile(re.escape(_TRACKING_PREFIX) + r"(\d{1,5})")
_SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")
#: Voxels read at once when segments are combined one by one (a few segments of a
#: large CT): bounds memory for SEGs with a hundred segments.
_VOXELS_PER_READ = 1 << 26
_SERIES_NUMBER = 9901
#: The largest label value each DICOM object carries: a SEG's segment numbers
#: are 16-bit (US); an RTSTRUCT's ROI numbers are signed 32-bit text (IS).
LARGEST_SEGMENT_NUMBER = 65535
LARGEST_ROI_NUMBER = 2**31 - 1


def present_labels(array: np.ndarray) -> list[int]:
    """The non-zero label values in ``array``, ascending."""
    return [int(v) for v in np.unique(array) if v != 0]


def labels_to_export(
    label_map: LabelMap, source: SourceSeries, largest: int = LARGEST_ROI_NUMBER
) -> list[int]:
    """The label values to export, once the mask is known to lie on ``source``'s slices.

    Refuses values a DICOM object cannot carry as they are (negative, or above
    ``largest``), rather than wrapping them into, or merging them with, another
    label.
    """
    match_slices(source, label_map.geometry, label_map.spatial_shape)
    values = present_labels(label_map.array)
    if not values:
        raise ExportError("the label layer is empty: there is nothing to export")
    negative = [v for v in values if v < 0]
    if negative:
        raise ExportError(
            f"the labels hold negative values ({_listed(negative)}), which no DICOM-SEG or "
            "RTSTRUCT can carry; relabel them to positive values, or export NIfTI or NRRD"
        )
    too_large = [v for v in values if v > largest]
    if too_large:
        raise ExportError(
            f"the labels hold values above {largest} ({_listed(too_large)}), which this DICOM "
            f"format cannot carry; relabel them to 1..{largest}, or export NIfTI or NRRD"
        )
    return values


def _listed(values: list[int], most: int = 5) -> str:
    """A few values for a message, and how many more there are."""
    shown = ", ".join(str(v) for v in values[:most])
    return shown if len(values) <= most else f"{shown} and {len(values) - most} more"


def write_dicom_seg_job(
    label_map: LabelMap,
    source: SourceSeries,
    path: Path,
    config: DicomExportConfig,
    provenance: Mapping[str, Any],
    colors: Mapping[int, Sequence[float]] | None = None,
    overwrite: bool = False,
) -> Job[Path]:
    """Write ``label_map`` (on ``source``'s grid) as a DICOM-SEG file at ``path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    yield Progress(0.0, "matching the labels to the source slices")
    values = labels_to_export(label_map, source, LARGEST_SEGMENT_NUMBER)
    kind, model_name = algorithm_of(provenance, config.algorithm)
    identification = None
    if model_name is not None:
        identification = hd.AlgorithmIdentificationSequence(
            name=model_name, family=codes.cid7162.ArtificialIntelligence, version=__version__
        )
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = label_map.label_names.get(value, f"label {value}")
        color = (colors or {}).get(value)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=kind,
                algorithm_identification=identification,
                tracking_id=f"{_TRACKING_PREFIX}{value}",
                tracking_uid=hd.UID(),
                display_color=None if color is None else _lab(color),
            )
        )
    lookup = np.zeros(int(label_map.array.max()) + 1, dtype=np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)
    frames = lookup[label_map.array[source.slice_index]]
    yield Progress(0.2, "encoding the segmentation")
    kind_of_seg = hd.seg.SegmentationTypeValues.BINARY
    syntax = ExplicitVRLittleEndian
    if config.compact:
        kind_of_seg, syntax = hd.seg.SegmentationTypeValues.LABELMAP, JPEGLSLossless
    try:
        seg = hd.seg.Segmentation(
            source_images=source.datasets,
            pixel_array=frames,
            segmentation_type=kind_of_seg,
            transfer_syntax_uid=syntax,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-medai",
            manufacturer_model_name="napari-medai",
            software_versions=__version__,
            device_serial_number="0",
            series_description=str(label_map.metadata.get("name", "segmentation"))[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ExportError(
            f"the source series cannot be referenced by a DICOM-SEG: {error}"
        ) from error
    if config.deidentify:
        deidentify(seg)
    yield Progress(0.8, "writing the DICOM-SEG file")
    written = atomic_write(Path(path), lambda tmp: seg.save_as(tmp), overwrite=overwrite)
    yield Progress(1.0, f"wrote {Path(path).name}")
    return written


def _lab(rgb: Sequence[float]) -> Any:
    """A 0..1 (or 0..255) RGB colour as highdicom's CIE Lab colour."""
    import highdicom as hd

    scale = 255.0 if max(rgb[:3]) <= 1.0 else 1.0
    return hd.color.CIELabColor.from_rgb(*(int(round(float(c) * scale)) for c in rgb[:3]))


def referenced_series_uid(dataset: Any) -> str:
    """The SeriesInstanceUID a SEG (or any object with ReferencedSeriesSequence) points at."""
    for item in dataset.get("ReferencedSeriesSequence", []):
        if item.get("SeriesInstanceUID"):
            return str(item.SeriesInstanceUID)
    return ""


def read_dicom_seg(path: Path, reference: Volume) -> LabelMap:
    """The segments of a DICOM-SEG file as one label map on ``reference``'s grid.

    Label values come from napari-medai's tracking IDs, else the segment
    numbers; names from the segment labels; colours (``metadata["segments"]``)
    from the recommended display colours. A FRACTIONAL SEG is read as labels
    where a segment's fraction is at least 0.5. Where segments overlap, the
    higher segment number wins, with a warning naming them. A file whose
    segments, frames or pixel data disagree is refused in words.
    """
    path = Path(path)
    seg = _open_seg(path)
    values, names, warnings = _label_values(seg, path.name)
    numbers, affine, more = _segment_numbers_volume(seg, sorted(values), path.name, names)
    warnings.extend(more)
    lookup = np.zeros(max(values, default=0) + 1, dtype=np.uint16)
    for number, value in values.items():
        lookup[number] = value
    labels = lookup[numbers]
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    zyx = np.eye(4)
    zyx[:3, :3] = affine[:3, :3][::-1, :]
    zyx[:3, 3] = affine[:3, 3][::-1]
    label_names = {values[n]: names[n] for n in values}
    own = LabelMap(labels, Geometry.from_affine(zyx), {}, label_names)
    on_scan = resample_label_map(own, reference.geometry, reference.spatial_shape)
    on_scan.geometry = reference.geometry
    warnings.extend(_off_scan(own, on_scan, path.name))
    on_scan.metadata = {"name": path.stem, "source": path.name, "warnings": warnings}
    colors = _display_colors(seg, values)
    if colors:
        on_scan.metadata["segments"] = {value: {"color": rgb} for value, rgb in colors.items()}
    return on_scan


def _display_colors(seg: Any, values: Mapping[int, int]) -> dict[int, list[float]]:
    """Label value -> 0..1 RGB from each segment's recommended display colour (CIE Lab)."""
    import highdicom as hd

    colors = {}
    for segment in seg.SegmentSequence:
        lab = segment.get("RecommendedDisplayCIELabValue")
        number = int(segment.SegmentNumber)
        if lab is None or number not in values:
            continue
        try:
            rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb()
        except (TypeError, ValueError):
            continue  # a malformed colour is no reason to refuse the segmentation
        colors[values[number]] = [c / 255.0 for c in rgb]
    return colors


def _refusal(name: str, problem: str) -> UnreadableFileError:
    return UnreadableFileError(f'Cannot open the DICOM-SEG "{name}": {problem}')


def _open_seg(path: Path) -> Any:
    """The file as a highdicom Segmentation, once its segments and frames agree."""
    import highdicom as hd
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for damaged files
        raise _refusal(path.name, f"it is not a readable DICOM file ({error})") from error
    try:
        _check_segments(dataset, path.name)
        _check_frames(dataset, path.name)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise _refusal(path.name, f"its header is damaged ({error})") from error
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as error:  # highdicom raises many types for odd or damaged objects
        raise _refusal(
            path.name, f"its segmentation structure is damaged or incomplete ({error})"
        ) from error


def _check_segments(dataset: Any, name: str) -> None:
    """Refuse a segment list that would merge or misname structures."""
    kind = str(dataset.get("SegmentationType", ""))
    if kind not in _SEGMENTATION_TYPES:
        raise _refusal(
            name, f"its segmentation type {kind!r} is not BINARY, FRACTIONAL or LABELMAP"
        )
    if kind == "FRACTIONAL" and not int(dataset.get("MaximumFractionalValue", 0) or 0) > 0:
        raise _refusal(name, "it is FRACTIONAL but states no maximum fractional value")
    segments = dataset.get("SegmentSequence") or []
    if not segments:
        raise _refusal(name, "it lists no segments")
    seen: set[int] = set()
    for segment in segments:
        number = segment.get("SegmentNumber")
        if number is None or number == "":
            raise _refusal(name, "a segment in its list has no segment number")
        number = int(number)
        if number == 0 and kind != "LABELMAP":
            raise _refusal(name, "it has a segment numbered 0 (segment numbers start at 1)")
        if number in seen:
            raise _refusal(
                name, f"segment number {number} is listed twice, so two structures share it"
            )
        seen.add(number)


def _check_frames(dataset: Any, name: str) -> None:
    """Refuse frames that disagree with the frame count, the segment list or the pixel data."""
    frames = int(dataset.get("NumberOfFrames", 0) or 0)
    groups = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if frames < 1 or len(groups) != frames:
        raise _refusal(
            name, f"it states {frames} frame(s) but describes {len(groups)}: the file is damaged"
        )
    numbers = {int(s.SegmentNumber) for s in dataset.SegmentSequence}
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    for index, group in enumerate(groups, start=1):
        identification = group.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if dataset.SegmentationType != "LABELMAP":
            number = identification[0].get("ReferencedSegmentNumber") if identification else None
            if number is None or int(number) not in numbers:
                raise _refusal(
                    name,
                    f"frame {index} belongs to segment {number}, which its segment list "
                    "does not describe",
                )
        plane = group.get("PlanePositionSequence") or shared.get("PlanePositionSequence")
        position = plane[0].get("ImagePositionPatient") if plane else None
        if position is None or len(position) != 3:
            raise _refusal(name, f"frame {index} has no position, so it cannot be placed")
    _check_pixel_data(dataset, name, frames)


def _check_pixel_data(dataset: Any, name: str, frames: int) -> None:
    """Refuse pixel data whose size (or compressed frame count) disagrees with the header."""
    from pydicom.encaps import generate_frames

    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if "PixelData" not in dataset or rows < 1 or columns < 1:
        raise _refusal(name, "it holds no pixel data, or no frame size")
    data = dataset.PixelData
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        try:
            found = sum(1 for _ in generate_frames(data, number_of_frames=frames))
        except Exception as error:  # pydicom raises several types for broken encapsulation
            raise _refusal(name, f"its compressed pixel data is damaged ({error})") from error
        if found != frames:
            raise _refusal(name, f"it states {frames} frame(s) but its pixel data holds {found}")
        return
    bits = frames * rows * columns * int(dataset.get("BitsAllocated", 0) or 0)
    needed = (bits + 7) // 8
    if len(data) not in (needed, needed + 1):  # one pad byte keeps the length even
        raise _refusal(
            name,
            f"its pixel data holds {len(data)} bytes, but {frames} frame(s) of "
            f"{rows} x {columns} pixels need {needed}: the frame count or size is wrong",
        )


def _label_values(seg: Any, name: str) -> tuple[dict[int, int], dict[int, str], list[str]]:
    """Segment number -> label value and -> name, and warnings.

    napari-medai's tracking IDs give the values when every segment has a valid,
    distinct one (1..65535); otherwise the segment numbers do, with a warning.
    """
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence if int(s.SegmentNumber) != 0]
    names = {
        int(s.SegmentNumber): str(s.get("SegmentLabel") or f"segment {s.SegmentNumber}")
        for s in seg.SegmentSequence
    }
    tracked = {}
    for segment in seg.SegmentSequence:
        found = _TRACKING.fullmatch(str(segment.get("TrackingID", "")))
        if found:
            tracked[int(segment.SegmentNumber)] = int(found.group(1))
    valid = (
        set(tracked) == set(numbers)
        and all(1 <= v <= LARGEST_SEGMENT_NUMBER for v in tracked.values())
        and len(set(tracked.values())) == len(tracked)
    )
    if valid:
        return tracked, names, []
    warnings = []
    if tracked:
        warnings.append(
            f'"{name}" carries napari-medai label values that are missing, out of range or '
            "repeated; its segment numbers are used as label values instead"
        )
    return {n: n for n in numbers}, names, warnings


def _segment_numbers_volume(
    seg: Any, numbers: list[int], name: str, names: dict[int, str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The segment number of every voxel on the SEG's own grid, its affine, and warnings."""
    fractional = seg.SegmentationType == "FRACTIONAL"
    try:
        if not fractional:
            try:
                volume = seg.get_volume(combine_segments=True)
                return np.asarray(volume.array), np.asarray(volume.affine, dtype=float), []
            except RuntimeError as error:
                if "overlap" not in str(error):
                    raise
        array, affine, warnings = _combined_one_by_one(seg, numbers, names, name)
    except Exception as error:  # highdicom raises many types for odd or damaged objects
        raise _refusal(
            name, f"its frames cannot be decoded or placed in space ({error})"
        ) from error
    if fractional:
        warnings.insert(
            0,
            f'"{name}" is a FRACTIONAL segmentation (probabilities or partial volumes); '
            "each segment is shown where its fraction is at least 0.5",
        )
    return array, affine, warnings


def _combined_one_by_one(
    seg: Any, numbers: list[int], names: dict[int, str], name: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Segments laid down in ascending number (the highest shown), with exact overlap counts.

    Each voxel keeps the id of the set of segments covering it, so every pair's
    shared voxels are counted even where a third segment covers them too. Read
    in groups of segments so that many segments on a large grid never need one
    array per segment at once.
    """
    covers: list[tuple[int, ...]] = [()]  # id -> the segment numbers covering a voxel
    ids_of = {(): 0}

    def id_of(cover: tuple[int, ...]) -> int:
        if cover not in ids_of:
            ids_of[cover] = len(covers)
            covers.append(cover)
        return ids_of[cover]

    ids, affine = None, None
    start, group = 0, 1
    while start < len(numbers):
        chunk = numbers[start : start + group]
        start += len(chunk)
        part = seg.get_volume(segment_numbers=chunk, combine_segments=False)
        if ids is None:
            ids = np.zeros(part.array.shape[:3], dtype=np.int32)
            affine = np.asarray(part.affine, dtype=float)
            group = max(1, _VOXELS_PER_READ // max(1, ids.size))
        for k, number in enumerate(chunk):
            inside = np.asarray(part.array[..., k]) >= 0.5
            before, inverse = np.unique(ids[inside], return_inverse=True)
            after = [id_of(covers[old] + (number,)) for old in before]
            ids[inside] = np.asarray(after, dtype=np.int32)[inverse.ravel()]
    shown = np.array([c[-1] if c else 0 for c in covers], dtype=np.uint16)
    counts = np.bincount(ids.ravel(), minlength=len(covers))
    overlaps: dict[tuple[int, int], int] = {}
    for cover, count in zip(covers, counts):
        for pair in combinations(cover, 2):
            overlaps[pair] = overlaps.get(pair, 0) + int(count)
    warnings = [
        f'in "{name}", segments {low} "{names[low]}" and {high} "{names[high]}" overlap in '
        f"{count} voxel(s); where segments overlap, the highest-numbered one is shown"
        for (low, high), count in sorted(overlaps.items())
        if count
    ]
    return shown[ids], affine, warnings


def _off_scan(own: LabelMap, on_scan: LabelMap, name: str) -> list[str]:
    """Refuse a SEG none of whose segments lands on the scan; warn about segments that miss it."""
    present = set(present_labels(own.array))
    landed = set(present_labels(on_scan.array))
    missing = sorted(present - landed)
    if present and not landed:
        raise _refusal(
            name,
            "its segments lie outside the scan it references (none of its voxels falls on "
            "the scan); it belongs to another position or scan",
        )
    if not present:
        return [f'every segment of "{name}" is empty']
    if missing:
        listed = ", ".join(f'{v} "{own.label_names.get(v, v)}"' for v in missing)
        return [f'segment(s) {listed} of "{name}" lie outside the scan and are not shown']
    return []
