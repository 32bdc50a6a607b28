"""Time to open a scan through napari-medai's reader versus bare SimpleITK.

Cases: the 512x512x20 JPEG 2000 CT series in ``$NAPARI_MEDAI_DATA/totalsegmentator/
example_ct_dicom`` and a synthetic 512x512x400 (``--slices``) int16 NIfTI written to a
temporary folder (gzipped and plain). The reader is ``napari_medai.core.io.reading.read_volume``
(which returns a numpy-backed Volume); the bare read is ``sitk.ImageSeriesReader``
with ``GetGDCMSeriesFileNames`` for DICOM and ``sitk.ReadImage`` otherwise, timed
alone (``bare``) and with ``sitk.GetArrayFromImage`` (``bare_numpy``).

Cold: the first read in a fresh process, after ``sync; echo 3 >
/proc/sys/vm/drop_caches`` when that is permitted (reported as ``cache_dropped``);
module imports happen before the clock starts and are reported apart; the median
of ``--cold-runs`` such processes. Warm: the median of ``--repeats`` reads in one
process after one untimed read. The load average is reported: on a shared
machine the numbers are only as steady as it is.

Usage: ``python bench/io.py [--repeats 5] [--cold-runs 3] [--slices 400]``; prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDAI_DATA", REPO / ".." / "shared" / "data")).resolve()
PLANE = (512, 512)
READERS = ("plugin", "bare", "bare_numpy")


def open_with(reader: str, path: Path) -> None:
    """One read of ``path`` by ``reader`` (the result is dropped)."""
    import SimpleITK as sitk

    if reader == "plugin":
        from napari_medai.core.io.reading import read_volume

        read_volume(path)
        return
    if path.is_dir():
        series = sitk.ImageSeriesReader()
        series.SetFileNames(series.GetGDCMSeriesFileNames(str(path)))
        image = series.Execute()
    else:
        image = sitk.ReadImage(str(path))
    if reader == "bare_numpy":
        sitk.GetArrayFromImage(image)


def import_modules() -> float:
    """Import everything either reader needs; return the seconds it took."""
    start = time.perf_counter()
    import SimpleITK  # noqa: F401

    import napari_medai.core.io.dicom  # noqa: F401
    import napari_medai.core.io.reading  # noqa: F401

    return time.perf_counter() - start


def timed(reader: str, path: Path) -> float:
    start = time.perf_counter()
    open_with(reader, path)
    return time.perf_counter() - start


def drop_caches() -> bool:
    """Empty the OS page cache (root only); False when not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def cold_once(reader: str, path: Path) -> tuple[float, float, bool]:
    """First read in a fresh process: (read seconds, import seconds, cache dropped)."""
    dropped = drop_caches()
    output = subprocess.run(
        [sys.executable, __file__, "--once", reader, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(output)
    return result["read_s"], result["import_s"], dropped


def cold(path: Path, runs: int) -> dict[str, tuple[float, float, bool]]:
    """Median cold read and import seconds per reader, readers alternating."""
    samples: dict[str, list[tuple[float, float, bool]]] = {reader: [] for reader in READERS}
    for _ in range(runs):
        for reader in READERS:
            samples[reader].append(cold_once(reader, path))
    return {
        reader: (
            statistics.median(run[0] for run in values),
            statistics.median(run[1] for run in values),
            all(run[2] for run in values),
        )
        for reader, values in samples.items()
    }


def warm(path: Path, repeats: int) -> dict[str, float]:
    """Median seconds per reader; readers alternate so drift hits them alike."""
    for reader in READERS:
        open_with(reader, path)
    times: dict[str, list[float]] = {reader: [] for reader in READERS}
    for _ in range(repeats):
        for reader in READERS:
            times[reader].append(timed(reader, path))
    return {reader: statistics.median(values) for reader, values in times.items()}


def write_synthetic(folder: Path, slices: int) -> dict[str, Path]:
    """A 512x512x``slices`` int16 CT-like volume (body ellipse in air, noise), .nii.gz and .nii."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    y, x = np.mgrid[: PLANE[0], : PLANE[1]]
    body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 <= 1.0
    plane = np.where(body, 40, -1000).astype(np.int16)
    noise = rng.integers(-20, 21, size=(8, *PLANE), dtype=np.int16)
    array = plane + noise[np.arange(slices) % 8]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.25))
    image.SetOrigin((-179.3, -179.3, -250.0))
    paths = {"nifti_gz": folder / "synthetic.nii.gz", "nifti": folder / "synthetic.nii"}
    for path in paths.values():
        sitk.WriteImage(image, str(path))
    return paths


def summarise(path: Path, repeats: int, cold_runs_count: int) -> dict:
    cold_runs = cold(path, cold_runs_count)
    warm_runs = warm(path, repeats)
    result: dict = {
        "cold_median_s": {reader: round(run[0], 4) for reader, run in cold_runs.items()},
        "warm_median_s": {reader: round(value, 4) for reader, value in warm_runs.items()},
        "import_s": round(cold_runs["plugin"][1], 3),
        "cache_dropped": all(run[2] for run in cold_runs.values()),
    }
    for mode, times in (("cold", result["cold_median_s"]), ("warm", result["warm_median_s"])):
        for bare in ("bare", "bare_numpy"):
            result[f"{mode}_overhead_vs_{bare}"] = round(times["plugin"] / times[bare] - 1.0, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=400, help="slices of the synthetic NIfTI")
    parser.add_argument("--once", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        import_s = import_modules()
        read_s = timed(args.once[0], Path(args.once[1]))
        print(json.dumps({"read_s": read_s, "import_s": import_s}))
        return

    dicom = DATA / "totalsegmentator" / "example_ct_dicom"
    if not dicom.is_dir():
        sys.exit(f"no test data at {DATA}; set NAPARI_MEDAI_DATA to a folder like ../shared/data")
    import_modules()
    report: dict = {
        "benchmark": "io",
        "goal": "plugin overhead <= 0.15 over bare SimpleITK",
        "data": str(DATA),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "cold_runs": args.cold_runs,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "cold_definition": "first read in a fresh process, imports excluded, after dropping "
        "the OS page cache when permitted (see cache_dropped)",
    }
    cases = {"dicom_512x512x20_jpeg2000": dicom}
    with tempfile.TemporaryDirectory(prefix="napari-medai-bench-") as folder:
        synthetic = write_synthetic(Path(folder), args.slices)
        cases[f"nifti_gz_512x512x{args.slices}_int16"] = synthetic["nifti_gz"]
        cases[f"nifti_512x512x{args.slices}_int16"] = synthetic["nifti"]
        report["cases"] = {
            name: summarise(path, args.repeats, args.cold_runs) for name, path in cases.items()
        }
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
