"""The plugin is found by napari after ``pip install .`` and ``pip install -e .``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import npe2
import pytest
import yaml

from napari_medai._napari.reader import get_reader
from napari_medai.core.io.reading import NIBABEL_FORMATS, SITK_FORMATS

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "napari_medai" / "napari.yaml"


def _python_names() -> list[str]:
    data = yaml.safe_load(MANIFEST.read_text())
    return [command["python_name"] for command in data["contributions"]["commands"]]


@pytest.mark.parametrize("python_name", _python_names())
def test_every_manifest_python_name_imports(python_name):
    module, attribute = python_name.split(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_development_install_serves_the_package_manifest():
    """An editable install finds napari.yaml in the package, a plain file (no symlink)."""
    installed = npe2.PluginManifest.from_distribution("napari-medai")
    assert installed == npe2.PluginManifest.from_file(MANIFEST)
    assert not MANIFEST.is_symlink()


def _reader_patterns() -> list[str]:
    data = yaml.safe_load(MANIFEST.read_text())
    [reader] = data["contributions"]["readers"]
    return reader["filename_patterns"]


def test_manifest_patterns_cover_every_format_the_reader_reads_and_no_more():
    """npe2 lower-cases suffixes and patterns before matching, so '*.dcm' covers '.DCM'."""
    patterns = _reader_patterns()
    assert "*" not in patterns  # napari would ask "Choose reader" for any file
    formats = {f"*{suffix}" for suffix in (*SITK_FORMATS, *NIBABEL_FORMATS)}
    dicom = {"*.dcm", "*.dicom", "*.ima", "*.zip", "*[0-9]", "[!.]" * 8}
    assert sorted(patterns) == sorted(formats | dicom)


def _offered(path: Path) -> list[str]:
    """The plugins napari would offer to open ``path`` with."""
    manager = npe2.PluginManager.instance()
    manager.discover()
    return [reader.plugin_name for reader in manager.iter_compatible_readers([str(path)])]


@pytest.mark.parametrize(
    "name", ["photo.png", "notes.txt", "cells.tif", "table.csv", "abcd.png", "scan.jp2x"]
)
def test_files_of_other_kinds_are_neither_offered_nor_claimed(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"not a scan")
    assert "napari-medai" not in _offered(path)
    assert get_reader(str(path)) is None


@pytest.mark.parametrize(
    "name",
    ["IM0001", "1.2.840.113619.2.55.7", "scan.IMA", "CT.DCM", "brain.mgz", "t1.hdr.gz", "DICOMDIR"],
)
def test_dicom_style_and_freesurfer_names_are_offered(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"")
    assert "napari-medai" in _offered(path)


@pytest.mark.slow
def test_wheel_install_finds_the_plugin(tmp_path):
    """Build a wheel, install it into a bare folder, and let npe2 find it there."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = (tmp_path / "dist").glob("napari_medai-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("napari_medai/napari.yaml").decode() == MANIFEST.read_text()
        licence = [name for name in archive.namelist() if name.endswith("/LICENSE")]
        assert licence, "no LICENSE in the wheel"
        assert archive.read(licence[0]) == (ROOT / "LICENSE").read_bytes()
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    # Exactly the package's modules: the demo launcher (scripts/) and the test heartbeat
    # (tests/helpers/) stay out, and nothing stale from an earlier build/ slips in.
    package = ROOT / "src"
    assert shipped == {
        p.relative_to(package).as_posix() for p in package.rglob("napari_medai/**/*.py")
    }
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    probe = (
        "import importlib.metadata as m, npe2, sys;"
        "d = m.distribution('napari-medai');"
        f"assert str(d._path).startswith({str(target)!r}), d._path;"
        "mf = npe2.PluginManifest.from_distribution('napari-medai');"
        "print(mf.name, len(mf.contributions.commands))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    )
    assert out.stdout.split()[0] == "napari-medai"
    assert int(out.stdout.split()[1]) == len(_python_names())
