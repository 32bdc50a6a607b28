"""Exporters as a registry: one class in one list gives a format to the export job and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from napari_medai.cli import build_parser
from napari_medai.core.errors import ExportError
from napari_medai.core.io import exporters
from napari_medai.core.io.export import ExportConfig, export_job, sidecar_path
from napari_medai.core.io.exporters import EXPORTERS, Exporter, ExportRequest, exporter_for
from napari_medai.core.jobs import Job, Progress, run_job
from napari_medai.core.phantom import make_phantom


@dataclass(frozen=True)
class NumpyExporter:
    """A format a test adds: the label values as a .npy array."""

    name: str = "numpy"
    label: str = "NumPy (.npy)"
    suffix: str = ".npy"
    guessed_from: tuple[str, ...] = (".npy",)
    choices: tuple[str, ...] = ()
    needs_series: bool = False

    def write_job(self, label_map, path: Path, request: ExportRequest) -> Job[Path]:
        yield Progress(0.0, f"writing {path.name}")
        np.save(path, label_map.array)
        return path


def _cli_format(name: str) -> str:
    """What ``napari-medai export --format name`` parses to (argparse exits on a bad choice)."""
    arguments = ["export", "mask.nii.gz", "--like", "ct.nii.gz", "--out", "out", "--format", name]
    return build_parser().parse_args(arguments).format


def test_every_exporter_has_its_own_name_and_the_cli_offers_them_all(capsys):
    names = [exporter.name for exporter in EXPORTERS]
    assert len(set(names)) == len(names)
    assert [_cli_format(name) for name in names] == names
    with pytest.raises(SystemExit):
        _cli_format("numpy")
    assert "invalid choice: 'numpy'" in capsys.readouterr().err
    for exporter in EXPORTERS:
        assert isinstance(exporter, Exporter)
        assert exporter.suffix.startswith(".") and exporter.label


@pytest.mark.parametrize(
    ("name", "format"),
    [("m.nii.gz", "nifti"), ("m.NII", "nifti"), ("m.nrrd", "nrrd"), ("m.mha", "mha")]
    + [("m.dcm", "dicom-seg")],
)
def test_the_format_is_guessed_from_the_suffix(name, format):
    assert exporter_for(Path(name)).name == format


def test_an_unknown_suffix_or_format_is_refused_naming_the_choices():
    with pytest.raises(ExportError, match=r"name it \.nii\.gz, \.nrrd, \.mha or \.dcm"):
        exporter_for(Path("mask.png"))
    with pytest.raises(ExportError, match="unknown format 'png'; choose nifti, nrrd, mha"):
        exporter_for(Path("mask.nii.gz"), "png")


def test_a_new_format_is_one_class_in_the_list(tmp_path, monkeypatch):
    monkeypatch.setattr(exporters, "EXPORTERS", (*EXPORTERS, NumpyExporter()))
    assert _cli_format("numpy") == "numpy"

    _, labels = make_phantom(shape=(8, 16, 16))
    out = tmp_path / "mask.npy"
    result = run_job(export_job(labels, out, ExportConfig(format="")))

    assert result.paths == [out, sidecar_path(out)]
    np.testing.assert_array_equal(np.load(out), labels.array)
    assert json.loads(sidecar_path(out).read_text())["format"] == "numpy"
