"""Export a label map in the format a clinic needs, with a JSON provenance sidecar.

One entry point for the Export widget and ``napari-medai export``: NIfTI, NRRD
and MetaImage through the label writer; DICOM-SEG and RTSTRUCT against the
DICOM series the mask was drawn on. Every file is written atomically; nothing
is replaced without ``overwrite``; the label map is never modified.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_medai import __version__
from napari_medai.core.errors import ExportError
from napari_medai.core.files import check_can_write, compound_stem, compound_suffix
from napari_medai.core.hashing import content_sha256
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.volume import LabelMap

#: Format name -> file suffix; the first three go through the label writer.
EXPORT_FORMATS = {
    "nifti": ".nii.gz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "dicom-seg": ".dcm",
    "rtstruct": ".dcm",
}
DICOM_FORMATS = ("dicom-seg", "rtstruct")
_BY_SUFFIX = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha"}


@dataclass(frozen=True)
class ExportConfig:
    """What to write: ``format`` (a key of :data:`EXPORT_FORMATS`), DICOM choices, sidecar."""

    format: str = "nifti"
    dicom: DicomExportConfig = field(default_factory=DicomExportConfig)
    sidecar: bool = True


@dataclass
class ExportResult:
    """The files written and any warnings (new UIDs, ...)."""

    paths: list[Path]
    warnings: list[str]


def format_for(path: Path, requested: str | None = None) -> str:
    """The export format: ``requested``, else guessed from the suffix (.dcm means SEG)."""
    if requested:
        if requested not in EXPORT_FORMATS:
            raise ExportError(f"unknown format {requested!r}; choose {', '.join(EXPORT_FORMATS)}")
        return requested
    suffix = compound_suffix(Path(path))
    if suffix == ".dcm":
        return "dicom-seg"
    if suffix not in _BY_SUFFIX:
        raise ExportError(
            f'cannot tell the format of "{Path(path).name}": name it .nii.gz, .nrrd, .mha or '
            ".dcm, or give the format"
        )
    return _BY_SUFFIX[suffix]


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
    kind = format_for(path, config.format)
    check_can_write(path, overwrite)
    if config.sidecar:
        check_can_write(sidecar_path(path), overwrite)
    warnings: list[str] = []
    if kind in DICOM_FORMATS:
        written = yield from scaled(
            _dicom_job(
                label_map,
                path,
                kind,
                config,
                provenance,
                source,
                series_uid,
                colors,
                overwrite,
                warnings,
            ),
            0.0,
            0.9,
        )
    else:
        from napari_medai.core.io.writing import write_label_map

        yield Progress(0.0, f"writing {path.name}")
        written = write_label_map(label_map, path, overwrite=overwrite)
    paths = [written]
    if config.sidecar:
        yield Progress(0.9, "writing the provenance sidecar")
        from napari_medai.core.io.writing import write_sidecar

        sidecar = _sidecar(label_map, written, kind, config, provenance, source, warnings)
        paths.append(write_sidecar(sidecar, sidecar_path(path), overwrite))
    yield Progress(1.0, f"exported {path.name}")
    return ExportResult(paths, warnings)


def _dicom_job(
    label_map: LabelMap,
    path: Path,
    kind: str,
    config: ExportConfig,
    provenance: dict[str, Any],
    source: Path | None,
    series_uid: str | None,
    colors: Mapping[int, Sequence[float]] | None,
    overwrite: bool,
    warnings: list[str],
) -> Job[Path]:
    from napari_medai.core.io.dicom_source import check_uids, read_source_series_job

    if source is None:
        raise ExportError(
            f"a {kind.upper()} must reference the DICOM series the labels were drawn on, and "
            "this scan did not come from DICOM. Export NIfTI or NRRD instead, or give the "
            "DICOM series (folder or .zip)"
        )
    series = yield from scaled(read_source_series_job(source, series_uid), 0.0, 0.4)
    check_uids(series, config.dicom.new_uids)
    warnings.extend(series.warnings)
    if kind == "dicom-seg":
        from napari_medai.core.io.dicom_seg import write_dicom_seg_job

        job = write_dicom_seg_job(
            label_map, series, path, config.dicom, provenance, colors, overwrite
        )
    else:
        from napari_medai.core.io.rtstruct import write_rtstruct_job

        job = write_rtstruct_job(
            label_map, series, path, config.dicom, provenance, colors, overwrite
        )
    return (yield from scaled(job, 0.4, 1.0))


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
    from napari_medai.core.io.writing import label_sidecar

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
        exported=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        warnings=warnings,
    )
    return sidecar
