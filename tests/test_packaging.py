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

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"


def _python_names() -> list[str]:
    data = yaml.safe_load(MANIFEST.read_text())
    return [command["python_name"] for command in data["contributions"]["commands"]]


@pytest.mark.parametrize("python_name", _python_names())
def test_every_manifest_python_name_imports(python_name):
    module, attribute = python_name.split(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_development_install_serves_the_top_level_manifest():
    """An editable install finds the repository's napari.yaml through the package."""
    installed = npe2.PluginManifest.from_distribution("napari-medai")
    assert installed == npe2.PluginManifest.from_file(MANIFEST)
    assert (ROOT / "src" / "napari_medai" / "napari.yaml").read_text() == MANIFEST.read_text()


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
