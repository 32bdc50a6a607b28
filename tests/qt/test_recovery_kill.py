"""A napari killed 15 s after the last brush stroke loses nothing: ``recover`` writes it all.

A real napari runs in a child process under the test's display: it opens the
phantom CT sample (which activates napari-medai, and so its autosave), makes a
Labels layer with napari's "new labels" button, paints through napari's brush
API (``Labels.paint``, the call a mouse stroke makes, with the same ``paint``
event), saves what it painted for the comparison, and is SIGKILLed 15 s later.
The CLI then lists the copy and writes it; nibabel (not our reader) reads the
file back, and voxels and grid must equal what was painted on the scan.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_medai
from napari_medai.core.phantom import make_phantom

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not os.environ.get("DISPLAY"),
    reason="needs SIGKILL and an X display (pytest-xvfb or xvfb-run)",
)

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import napari
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    viewer = napari.Viewer()
    viewer.open_sample("napari-medai", "phantom_ct")  # runs napari-medai's on_activate
    from napari_medai._napari import autosave

    scan = next(layer for layer in viewer.layers if layer._type_string == "image")
    viewer.layers.selection.active = scan
    viewer._new_labels()  # the "new labels" button
    labels = viewer.layers.selection.active
    labels.brush_size = 9
    for z, y, x, value in [(10, 40, 40, 1), (10, 44, 48, 1), (20, 80, 70, 2), (31, 60, 90, 3)]:
        viewer.dims.set_current_step(0, z)
        labels.paint((z, y, x), value)
    np.save(sys.argv[1], np.asarray(labels.data))
    print("PAINTED", json.dumps({"layer": labels.name, "scan": scan.name,
                      "autosaving": len(autosave._AUTOSAVES)}), flush=True)
    napari.run()
    """
)

#: The goal: killed this long after the last stroke, nothing is lost.
AFTER_LAST_STROKE_S = 15.0


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_medai.cli", "recover", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _painted(child: subprocess.Popen) -> dict:
    """Wait for the child's line saying napari is up and the strokes are painted."""
    for line in child.stdout:
        if line.startswith("PAINTED "):
            return json.loads(line.removeprefix("PAINTED "))
    raise AssertionError(child.stderr.read()[-3000:])


def test_a_killed_napari_loses_nothing_painted(tmp_path):
    src = str(Path(napari_medai.__file__).parents[1])
    env = {
        **os.environ,
        "NAPARI_MEDAI_RECOVERY": str(tmp_path / "recovery"),
        "NAPARI_CONFIG": "",  # napari's settings in memory: the developer's stay untouched
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    painted_file = tmp_path / "painted.npy"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(painted_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = _painted(child)
        time.sleep(AFTER_LAST_STROKE_S)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert started["autosaving"] == 1  # opening the sample activated the plugin's autosave

    listing = _cli("--list", env=env)
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert (entry["layer"], entry["scan"]) == (started["layer"], started["scan"])
    assert entry["running"] is False
    out = tmp_path / "restored.nii.gz"
    written = _cli(entry["id"], "--out", str(out), env=env)
    assert written.returncode == 0, written.stderr

    painted = np.load(painted_file)
    assert np.count_nonzero(painted) > 0
    image = nib.load(out)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), painted)
    scan, _ = make_phantom()  # the sample's scan, made again
    # NIfTI stores the grid as 32-bit floats: 1e-4 mm is ~100 times their rounding here.
    np.testing.assert_allclose(image.affine, scan.geometry.ras_affine(), atol=1e-4)
