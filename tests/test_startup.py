"""Fast start: opening napari, a dock or ``napari-medai --help`` never imports torch or MONAI.

torch and MONAI take seconds to import (7-20 s on a busy machine); they load
when a job needs them, in the job's thread. Each check runs in a fresh Python
process, since this one has imported them long ago. The manifest is read, so a
new widget, reader or sub-command is checked without editing this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

import napari_medai

MANIFEST = Path(napari_medai.__file__).parent / "napari.yaml"
#: Libraries too slow to import at start; scipy.ndimage and SimpleITK are fine.
HEAVY = ("torch", "monai", "matplotlib", "highdicom", "ray", "pydicom", "pandas")


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def python_names() -> list[str]:
    return [command["python_name"] for command in manifest()["contributions"]["commands"]]


def run_fresh(code: str, timeout: float = 120.0) -> dict:
    """Run ``code`` in a new interpreter with this checkout first on the path; parse its JSON."""
    src = str(Path(napari_medai.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_manifest_lists_the_widgets_and_cli_has_commands():
    names = python_names()
    assert any(name.startswith("napari_medai._qt.") for name in names)
    assert any(name.startswith("napari_medai._napari.") for name in names)


def test_start_imports_neither_torch_nor_monai():
    """Import every manifest module and build the CLI parser; then open every dock.

    One process for both (a fresh napari costs seconds); the docks only where
    there is a display.
    """
    widgets = [widget["display_name"] for widget in manifest()["contributions"]["widgets"]]
    open_docks = bool(os.environ.get("DISPLAY"))
    found = run_fresh(
        f"""
        import importlib, json, sys
        heavy = {HEAVY!r}
        for name in {python_names()!r}:
            module, _, attribute = name.partition(":")
            getattr(importlib.import_module(module), attribute)
        from napari_medai.cli import build_parser
        build_parser().format_help()
        found = {{"imports": [m for m in heavy if m in sys.modules], "docks": []}}
        if {open_docks!r}:
            import napari
            from napari.plugins import _initialize_plugins
            _initialize_plugins()
            viewer = napari.Viewer(show=False)
            for name in {widgets!r}:
                viewer.window.add_plugin_dock_widget("napari-medai", name)
            found["docks"] = [m for m in heavy if m in sys.modules]
            viewer.close()
        print(json.dumps(found))
        """
    )
    assert found["imports"] == [], f"imported by the modules or the CLI parser: {found['imports']}"
    assert found["docks"] == [], f"imported while opening the docks: {found['docks']}"
