"""Export a label map in the format a clinic needs, with a JSON provenance sidecar.

One entry point for the Export widget and ``napari-medai export``; the formats
are the exporters of :mod:`.exporters` (NIfTI, NRRD and MetaImage through the
label writer; DICOM-SEG and RTSTRUCT against the DICOM series the mask was
drawn on). Every file is written atomically; nothing
is replaced without ``overwrite``; the label map is never modified.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_medai import __version__
from napari_medai.core.errors import ExportError
from napari_medai.core.files import check_can_write, compound_stem
from napari_medai.core.hashing import content_sha256
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.exporters import ExportRequest, exporter_for
from napari_medai.core.io.writing import label_sidecar, write_sidecar
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.volume import LabelMap

if TYPE_CHECKING:
    from napari_medai.core.io.dicom_source import SourceSeries


@dataclass(frozen=True)
class ExportConfig:
    """What to write: ``format`` (an exporter's name), DICOM choices, sidecar."""

    format: str = "nifti"
    dicom: DicomExportConfig = field(default_factory=DicomExportConfig)
    sidecar: bool = True


@dataclass
class ExportResult:
    """The files written and any warnings (new UIDs, ...)."""

    paths: list[Path]
    warnings: list[str]


def sidecar_path(path: Path) -> Path:
    """``mask.nii.gz`` -> ``mask.json`` beside it."""
    return Path(path).with_name(compound_stem(Path(path)) + ".json")


def export_job(
    label_map: LabelMap,
    path: Path,
    config: ExportConfig,
    provenance: Mapping[str, Any] | None = None,
    source: Path | None = None,
    series_uid: str | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
    overwrite: bool = False,
) -> Job[ExportResult]:
    """Write ``label_map`` to ``path`` (and its sidecar); ``source`` is the scan's file or series.

    DICOM formats need ``source`` to be the DICOM series the labels lie on
    (``series_uid`` picks it in a folder holding several).
    """
    path = Path(path)
    provenance = dict(provenance or {})
    exporter = exporter_for(path, config.format)
    check_can_write(path, overwrite)
    if config.sidecar:
        check_can_write(sidecar_path(path), overwrite)
    warnings: list[str] = []
    request = ExportRequest(config.dicom, provenance, colors, overwrite)
    start = 0.0
    if exporter.needs_series:
        start = 0.36
        series = yield from scaled(
            _source_series_job(exporter.name, source, series_uid, config.dicom.new_uids), 0.0, start
        )
        warnings.extend(series.warnings)
        request = replace(request, series=series)
    written = yield from scaled(exporter.write_job(label_map, path, request), start, 0.9)
    paths = [written]
    if config.sidecar:
        yield Progress(0.9, "writing the provenance sidecar")
        sidecar = _sidecar(label_map, written, exporter.name, config, provenance, source, warnings)
        paths.append(write_sidecar(sidecar, sidecar_path(path), overwrite))
    yield Progress(1.0, f"exported {path.name}")
    return ExportResult(paths, warnings)


def _source_series_job(
    kind: str, source: Path | None, series_uid: str | None, new_uids: bool
) -> Job[SourceSeries]:
    """The DICOM series a DICOM output references, its UIDs checked; refused in words if none."""
    # Imported here, as the writers are: pydicom is no cost to a dock that exports NIfTI.
    from napari_medai.core.io.dicom_source import check_uids, read_source_series_job

    if source is None:
        raise ExportError(
            f"a {kind.upper()} must reference the DICOM series the labels were drawn "
            "on, and this scan did not come from DICOM. Export NIfTI or NRRD instead, or give "
            "the DICOM series (folder or .zip)"
        )
    series = yield from read_source_series_job(source, series_uid)
    check_uids(series, new_uids)
    return series


def _sidecar(
    label_map: LabelMap,
    written: Path,
    kind: str,
    config: ExportConfig,
    provenance: dict[str, Any],
    source: Path | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The writer's sidecar (names, volumes, geometry, model) plus what an export adds.

    The source is named by its hash only; DICOM UIDs are left out by
    :func:`label_sidecar`.
    """
    model = provenance.get("model")
    sidecar = label_sidecar(
        label_map,
        input_name=None,
        outputs={"labels": written.name},
        provenance=provenance,
        model=None
        if not model
        else {
            "name": model,
            "sha256": provenance.get("sha256"),
            "source": provenance.get("source"),
        },
        settings=asdict(config),
    )
    sidecar.update(
        format=kind,
        output_sha256=content_sha256(written),
        source_sha256=content_sha256(source) if source is not None and source.exists() else None,
        plugin_version=__version__,
        exported=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        warnings=warnings,
    )
    return sidecar
