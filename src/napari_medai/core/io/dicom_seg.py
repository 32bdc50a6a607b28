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
from pathlib import Path
from typing import Any

import numpy as np

from napari_medai import __version__
from napari_medai.core.errors import ExportError, UnreadableFileError
from napari_medai.core.files import atomic_write
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom_source import SourceSeries, deidentify, match_slices
from napari_medai.core.io.export import DicomExportConfig, algorithm_of
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap, Volume

#: Tracking ID that carries the label value through a round trip.
_TRACKING_PREFIX = "napari-medai label "
_SERIES_NUMBER = 9901


def present_labels(array: np.ndarray) -> list[int]:
    """The non-zero label values in ``array``, ascending."""
    return [int(v) for v in np.unique(array) if v != 0]


def labels_to_export(label_map: LabelMap, source: SourceSeries) -> list[int]:
    """The label values to export, once the mask is known to lie on ``source``'s slices."""
    match_slices(source, label_map.geometry, label_map.spatial_shape)
    values = present_labels(label_map.array)
    if not values:
        raise ExportError("the label layer is empty: there is nothing to export")
    return values


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
    values = labels_to_export(label_map, source)
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
    numbers; names from the segment labels. Overlapping segments: the higher
    segment number wins.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    except Exception as error:  # highdicom raises many types for odd or damaged objects
        raise UnreadableFileError(
            f'Cannot open the DICOM-SEG "{path.name}": {error}'.rstrip()
        ) from error
    names, values = {}, {}
    for segment in seg.SegmentSequence:
        number = int(segment.SegmentNumber)
        if number == 0:
            continue  # a LABELMAP's background segment: value 0 stays unlabelled
        match = re.fullmatch(re.escape(_TRACKING_PREFIX) + r"(\d+)", segment.get("TrackingID", ""))
        values[number] = int(match.group(1)) if match else number
        names[values[number]] = str(segment.get("SegmentLabel", f"segment {number}"))
    array = np.asarray(volume.array)
    lookup = np.zeros(max(values, default=0) + 1, dtype=np.uint32)
    for number, value in values.items():
        lookup[number] = value
    labels = lookup[array]
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    affine = np.asarray(volume.affine, dtype=float)
    zyx = np.eye(4)
    zyx[:3, :3] = affine[:3, :3][::-1, :]
    zyx[:3, 3] = affine[:3, 3][::-1]
    own = LabelMap(labels, Geometry.from_affine(zyx), {}, names)
    on_scan = resample_label_map(own, reference.geometry, reference.spatial_shape)
    on_scan.geometry = reference.geometry
    on_scan.metadata = {"name": path.stem, "source": path.name, "warnings": []}
    return on_scan
