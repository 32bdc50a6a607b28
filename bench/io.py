"""Time (and memory) to open a scan through napari-medai's reader versus bare SimpleITK.

Cases: the 512x512x20 JPEG 2000 CT series in ``$NAPARI_MEDAI_DATA/totalsegmentator/
example_ct_dicom``, a synthetic 512x512x500 uncompressed CT series (``--dicom-slices``), and
synthetic 512x512x400 (``--slices``) int16 NIfTI volumes written to a temporary folder: a
compressible CT-like one (gzipped and plain) and uniform noise (gzipped). The reader is
``napari_medai.core.io.reading.read_volume`` (which returns a numpy-backed Volume); the bare
read is ``sitk.ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` for DICOM and
``sitk.ReadImage`` otherwise, timed alone (``bare``) and with ``sitk.GetArrayFromImage``
(``bare_numpy``: what a viewer needs, an array).

Cold: the first read in a fresh process, after ``sync; echo 3 >
/proc/sys/vm/drop_caches`` when that is permitted (reported as ``cache_dropped``);
module imports happen before the clock starts and are reported apart; the median
of ``--cold-runs`` such processes. Warm: the median of ``--repeats`` reads in one
process after one untimed read. Readers alternate (ours, bare, bare_numpy, ours, ...)
so a busy machine slows them alike. The load average is reported: on a shared
machine the numbers are only as steady as it is.

``--big``: instead, 512x512xN int16 ``.nii`` and ``.nii.gz`` CTs for N in ``--big-slices``
(default 250 500 1000): each reader opens each file in a fresh process (no cache drop),
reporting its seconds and the process's peak resident memory over its size after imports,
``napari`` being napari's own path (napari imported, the reader's layer added to a
``ViewerModel``); ratios are to the voxels' size.

Usage: ``python bench/io.py [--repeats 5] [--cold-runs 3] [--slices 400] [--dicom-slices 500]``
or ``python bench/io.py --big [--big-slices 250 500 1000] [--big-runs 3]``; prints one JSON
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
BIG_READERS = ("plugin", "bare", "napari")


def open_with(reader: str, path: Path) -> object:
    """One read of ``path`` by ``reader``; returns what it read, to be dropped or measured."""
    import SimpleITK as sitk

    if reader == "plugin":
        from napari_medai.core.io.reading import read_volume

        return read_volume(path)
    if reader == "napari":
        return add_to_viewer(path)
    if path.is_dir():
        series = sitk.ImageSeriesReader()
        series.SetFileNames(series.GetGDCMSeriesFileNames(str(path)))
        image = series.Execute()
    else:
        image = sitk.ReadImage(str(path))
    if reader == "bare_numpy":
        return sitk.GetArrayFromImage(image)
    return image


def add_to_viewer(path: Path) -> object:
    """napari's path: the plugin's reader, its layers added to a headless viewer."""
    from napari.components import ViewerModel
    from napari.layers import Layer

    from napari_medai._napari.reader import read_layers

    viewer = ViewerModel()
    for data, kwargs, kind in read_layers(str(path)):
        viewer.layers.append(Layer.create(data, kwargs, kind))
    return viewer


def import_modules(reader: str = "plugin") -> float:
    """Import everything the readers need (napari too for ``napari``); return the seconds."""
    start = time.perf_counter()
    import SimpleITK  # noqa: F401

    import napari_medai.core.io.dicom  # noqa: F401
    import napari_medai.core.io.reading  # noqa: F401

    if reader == "napari":
        import napari._qt  # noqa: F401  (napari's process has Qt loaded; the reader asks it)
        import napari.components  # noqa: F401
        import napari.layers  # noqa: F401

        import napari_medai._napari.reader  # noqa: F401
        import napari_medai.core.io.dicom_derived  # noqa: F401

    return time.perf_counter() - start


def timed(reader: str, path: Path) -> float:
    start = time.perf_counter()
    open_with(reader, path)
    return time.perf_counter() - start


def once(reader: str, path: Path) -> dict[str, float]:
    """This process's first read: seconds, import seconds, resident MB after imports and at peak."""
    import psutil

    import_s = import_modules(reader)
    base_mb = psutil.Process().memory_info().rss / 1e6
    start = time.perf_counter()
    result = open_with(reader, path)
    read_s = time.perf_counter() - start
    peak_mb = peak_resident_mb()
    del result
    return {"read_s": read_s, "import_s": import_s, "base_mb": base_mb, "peak_mb": peak_mb}


def drop_caches() -> bool:
    """Empty the OS page cache (root only); False when not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM).

    Not ``ru_maxrss``: Linux carries it over from the parent through fork and
    exec, so a child of a parent holding a big array would report the parent's.
    """
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1e3  # kB


def in_fresh_process(reader: str, path: Path) -> dict[str, float]:
    """:func:`once` in a new Python process."""
    output = subprocess.run(
        [sys.executable, __file__, "--once", reader, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.splitlines()[-1])


def cold_once(reader: str, path: Path) -> tuple[float, float, bool]:
    """First read in a fresh process: (read seconds, import seconds, cache dropped)."""
    dropped = drop_caches()
    result = in_fresh_process(reader, path)
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


def ct_like(slices: int):
    """A 512x512x``slices`` int16 CT-like array (body ellipse in air, +-20 noise, 8 planes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[: PLANE[0], : PLANE[1]]
    body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 <= 1.0
    plane = np.where(body, 40, -1000).astype(np.int16)
    noise = rng.integers(-20, 21, size=(8, *PLANE), dtype=np.int16)
    return plane + noise[np.arange(slices) % 8]


def write_image(array, path: Path) -> Path:
    """``array`` (z, y, x) as a file on a 0.7x0.7x1.25 mm grid, as SimpleITK writes it."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.25))
    image.SetOrigin((-179.3, -179.3, -250.0))
    sitk.WriteImage(image, str(path))
    return path


def write_synthetic(folder: Path, slices: int) -> dict[str, Path]:
    """The CT-like volume as .nii.gz and .nii, and uniform int16 noise as .nii.gz."""
    import numpy as np

    array = ct_like(slices)
    noise = np.random.default_rng(1).integers(-32768, 32768, array.shape, dtype=np.int16)
    return {
        "nifti_gz": write_image(array, folder / "synthetic.nii.gz"),
        "nifti": write_image(array, folder / "synthetic.nii"),
        "nifti_gz_noise": write_image(noise, folder / "noise.nii.gz"),
    }


def write_dicom(folder: Path, slices: int) -> Path:
    """The CT-like volume as an uncompressed DICOM series (stored + 1024, intercept -1024)."""
    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    import numpy as np
    from dicom_factory import write_series

    stored = (ct_like(slices).astype(np.int32) + 1024).astype(np.uint16)
    write_series(folder, stored, spacing=(0.7, 0.7), step=1.25, intercept=-1024.0)
    return folder


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
            result[f"{mode}_ratio_to_{bare}"] = round(times["plugin"] / times[bare], 3)
    return result


def big(slices_list: list[int], runs: int) -> dict:
    """Seconds and peak memory of opening 512x512xN .nii/.nii.gz CTs, per reader (median)."""
    import statistics as stats

    cases: dict = {}
    with tempfile.TemporaryDirectory(prefix="napari-medai-bench-") as folder:
        for slices in slices_list:
            array = ct_like(slices)
            data_mb = array.nbytes / 1e6
            for suffix in (".nii", ".nii.gz"):
                path = write_image(array, Path(folder) / f"big{slices}{suffix}")
                samples: dict[str, list[dict]] = {reader: [] for reader in BIG_READERS}
                for _ in range(runs):
                    for reader in BIG_READERS:
                        samples[reader].append(in_fresh_process(reader, path))
                case = {"data_mb": round(data_mb, 1)}
                for reader, values in samples.items():
                    peak = stats.median(v["peak_mb"] for v in values)
                    over = stats.median(v["peak_mb"] - v["base_mb"] for v in values)
                    case[reader] = {
                        "read_s": round(stats.median(v["read_s"] for v in values), 3),
                        "base_mb": round(stats.median(v["base_mb"] for v in values)),
                        "peak_mb": round(peak),
                        "peak_over_data": round(peak / data_mb, 2),
                        "peak_above_base_over_data": round(over / data_mb, 2),
                    }
                cases[f"{suffix[1:].replace('.', '_')}_512x512x{slices}_int16"] = case
                path.unlink()
            del array
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=400, help="slices of the synthetic NIfTI")
    parser.add_argument("--dicom-slices", type=int, default=500, help="slices of the DICOM series")
    parser.add_argument("--big", action="store_true", help="memory and time of big .nii files")
    parser.add_argument("--big-slices", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--big-runs", type=int, default=3)
    parser.add_argument("--once", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(once(args.once[0], Path(args.once[1]))))
        return

    report: dict = {
        "benchmark": "io",
        "goal": "plugin at or below 1.0x bare SimpleITK; big scans peak at most 2x their size",
        "data": str(DATA),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min_before": round(os.getloadavg()[0], 2),
    }
    if args.big:
        report["runs"] = args.big_runs
        report["big"] = big(args.big_slices, args.big_runs)
        report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(report, indent=2))
        return
    dicom = DATA / "totalsegmentator" / "example_ct_dicom"
    if not dicom.is_dir():
        sys.exit(f"no test data at {DATA}; set NAPARI_MEDAI_DATA to a folder like ../shared/data")
    import_modules()
    report |= {
        "repeats": args.repeats,
        "cold_runs": args.cold_runs,
        "cold_definition": "first read in a fresh process, imports excluded, after dropping "
        "the OS page cache when permitted (see cache_dropped)",
    }
    cases = {"dicom_512x512x20_jpeg2000": dicom}
    with tempfile.TemporaryDirectory(prefix="napari-medai-bench-") as folder:
        series = write_dicom(Path(folder) / "series", args.dicom_slices)
        cases[f"dicom_512x512x{args.dicom_slices}_uncompressed"] = series
        synthetic = write_synthetic(Path(folder), args.slices)
        cases[f"nifti_gz_512x512x{args.slices}_int16"] = synthetic["nifti_gz"]
        cases[f"nifti_512x512x{args.slices}_int16"] = synthetic["nifti"]
        cases[f"nifti_gz_noise_512x512x{args.slices}_int16"] = synthetic["nifti_gz_noise"]
        report["cases"] = {
            name: summarise(path, args.repeats, args.cold_runs) for name, path in cases.items()
        }
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
