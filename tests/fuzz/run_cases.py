"""Child process: open each case through napari's ViewerModel and the ``info`` CLI.

Run as ``python run_cases.py cases.json``. napari is imported once per batch.
For each case it prints ``START <index>`` before and one JSON line after, so a
parent that sees the process die knows which case crashed it. Each case has a
wall-clock alarm (a hang becomes an outcome, not a stuck test).
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import time
import traceback
from pathlib import Path

#: Seconds one case may take (reader plus CLI) before it counts as a hang.
CASE_SECONDS = 10


class Hang(Exception):
    """Raised by the alarm when a case takes too long."""


def _on_alarm(signum, frame):
    raise Hang()


def _medai_message(error: BaseException) -> tuple[str, str] | None:
    """(class name, message) of the MedaiError in ``error``'s chain, if any."""
    from napari_medai.core.errors import MedaiError

    seen = error
    while seen is not None:
        if isinstance(seen, MedaiError):
            return type(seen).__name__, str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _declined(message: str) -> bool:
    """napari's words when a plugin's reader refuses a path, or its manifest does not claim it."""
    return "refused the file" in message or "is not a compatible reader" in message


def _through_napari(viewer, path: str) -> dict:
    started = time.perf_counter()
    try:
        layers = viewer.open(path, plugin="napari-medai")
    except Hang:
        raise
    except Exception as error:  # every outcome is recorded; the test judges it
        medai = _medai_message(error)
        outcome = {"ok": False, "seconds": time.perf_counter() - started}
        if isinstance(error, FileNotFoundError) and not Path(path).exists():
            outcome["napari_says"] = str(error)  # napari checks paths before any plugin
        elif medai is None and _declined(str(error)):
            outcome["declined"] = str(error)
        elif medai is None:
            outcome["traceback"] = traceback.format_exc()
        else:
            outcome["error"], outcome["message"] = medai
        return outcome
    meta = layers[0].metadata.get("napari_medai", {}) if layers else {}
    if layers and Path(path).is_file() and len(list(Path(path).parent.iterdir())) == 1:
        difference = _pydicom_difference(path, layers[0].data)
        if difference:
            return {"ok": True, "shapes": [], "warnings": [], "pydicom": difference}
    return {
        "ok": True,
        "seconds": time.perf_counter() - started,
        "shapes": [list(layer.data.shape) for layer in layers],
        "affine": layers[0].affine.affine_matrix.tolist() if layers else None,
        "warnings": meta.get("provenance", {}).get("warnings", []),
    }


def _through_cli(path: str) -> dict:
    from napari_medai.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["info", path])
    except Hang:
        raise
    except BaseException:  # noqa: BLE001 - a traceback out of the CLI is the finding
        return {"code": None, "traceback": traceback.format_exc()}
    outcome = {"code": code, "seconds": time.perf_counter() - started}
    if code == 0:
        summary = json.loads(out.getvalue())
        outcome["shape"] = summary["shape_zyx"]
        outcome["warnings"] = summary["warnings"]
    else:
        outcome["stderr"] = err.getvalue().strip()
    return outcome


def _nibabel_view(path: str) -> dict | None:
    """nibabel's shape and voxel->LPS (z, y, x) affine, or None when nibabel refuses."""
    import nibabel
    import numpy as np

    try:
        image = nibabel.load(path)
        shape = image.shape
        affine = np.asarray(image.affine, dtype=float)
    except Exception:  # nibabel refusing is not a finding
        return None
    if len(shape) != 3 or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine)) < 1e-9:
        return None  # nibabel takes a degenerate sform as is; the reader falls back to the qform
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    # (i, j, k) -> (x, y, z) becomes (k, j, i) -> (z, y, x).
    flip = np.eye(4)[[2, 1, 0, 3]]
    return {"shape": [int(n) for n in shape[::-1]], "affine": (flip @ lps @ flip).tolist()}


def _warm_up(viewer_type) -> None:
    """Open one small NIfTI untimed: the first read pays one-off imports, not a case."""
    import tempfile

    import numpy as np
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "warm.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), path)
        viewer_type().open(path, plugin="napari-medai")
        _through_cli(path)


def _pydicom_difference(path: str, layer_data) -> str | None:
    """How a single-frame DICOM that opened differs from pydicom's rescaled pixels, or None."""
    import numpy as np
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        expected = ds.pixel_array * slope + float(ds.get("RescaleIntercept", 0) or 0)
    except Exception:  # pydicom refusing is not a finding
        return None
    got = np.asarray(layer_data, dtype=float).squeeze()
    if got.shape != expected.shape:
        return f"shape {got.shape} vs pydicom {expected.shape}"
    if not np.allclose(got, expected, atol=1e-3 * max(1.0, abs(slope))):
        return f"values differ by up to {np.abs(got - expected).max():g}"
    return None


def main(cases_file: str) -> None:
    import logging

    logging.disable(logging.CRITICAL)
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    # Pay the imports once, outside any case's time limit (the CLI parser imports its
    # sub-commands; the DICOM reader imports pydicom on first use).
    from napari_medai.cli import build_parser
    from napari_medai.core.io import dicom  # noqa: F401

    build_parser()
    _warm_up(viewer_type=ViewerModel)
    signal.signal(signal.SIGALRM, _on_alarm)
    cases = json.loads(Path(cases_file).read_text())
    viewer = ViewerModel()
    for index, case in enumerate(cases):
        print(f"START {index}", flush=True)  # noqa: T201 - the protocol with the parent
        result = {"index": index}
        signal.alarm(CASE_SECONDS)
        try:
            result["napari"] = _through_napari(viewer, case["path"])
            result["cli"] = _through_cli(case["path"])
            if case.get("compare_nibabel") and result["napari"]["ok"]:
                result["nibabel"] = _nibabel_view(case["path"])
        except Hang:
            result["hang"] = True
        finally:
            signal.alarm(0)
        viewer.layers.clear()
        print(json.dumps(result), flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1])
