"""Benchmark: a 512x512x1000 int16 CT (500 MB) in napari: memory to open and segment, scrolling.

Writes synthetic CTs (a body ellipse with an organ, int16 HU, 0.8 x 0.8 x 1.5 mm) as
uncompressed ``.nii`` files of ``--sizes`` slices, a 300-slice one to compare scrolling with, and
a 4D series of the largest size (4 time points of a quarter of its slices) to a temporary folder.
Each scan runs in a fresh napari process (``--child``), so each peak is its own:

- opening: the file opened as the user does (``viewer.open`` with the plugin's reader); peak RSS
  of napari's process (the kernel's VmHWM) against the volume's bytes;
- scrolling: the slider steps one slice every ``--interval`` ms for ``--seconds`` while a 10 ms
  heartbeat (``tests/helpers/heartbeat.py``) records how late the event loop is;
- segmenting: the Segment dock runs a tiny 8 mm UNet package (``tests/helpers/cohort_scans``)
  through its catalogue job in the worker process. napari's VmHWM is reset first (Linux
  ``clear_refs``), the worker is fresh, so the sum of both peaks bounds the total from above;
  a 10 ms sampler of both processes' RSS gives the simultaneous peak.

Goals (issue 22): opening <= 2x the volume, segmenting <= 3x (all processes), no scroll stall
over 100 ms. Run under ``xvfb-run -a -s "-screen 0 1366x768x24"``; prints one JSON object.
Usage: ``python bench/big_scan.py [--sizes 250 500 1000] [--seconds 5] [--no-segment]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "helpers")]

PLUGIN = "napari-medai"
ROWS = COLS = 512
SPACING_XYZ = (0.8, 0.8, 1.5)
MB = 1 << 20
SCROLL_COMPARED = 300
FRAMES = 4


def synthetic_ct(slices: int, frames: int = 1) -> np.ndarray:
    """(x, y, z[, t]) int16 HU: air, a body ellipse (40 HU) and an ellipsoid organ (100 HU)."""
    x, y, z = np.ogrid[:COLS, :ROWS, :slices]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 240.0) ** 2 <= 1
    organ = ((z - slices / 2) / (slices / 3)) ** 2 + ((y - 230) / 90.0) ** 2 + (
        (x - 180) / 70.0
    ) ** 2 <= 1
    ct = np.where(body, np.int16(40), np.int16(-1000)) + np.where(organ, np.int16(60), np.int16(0))
    return np.repeat(ct[..., None], frames, axis=3) if frames > 1 else ct


def write_scan(folder: Path, slices: int, frames: int = 1) -> Path:
    """An uncompressed NIfTI of :func:`synthetic_ct`, as a scanner converter writes it."""
    import nibabel as nib

    path = folder / (f"ct_{slices}x{frames}.nii" if frames > 1 else f"ct_{slices}.nii")
    affine = np.diag([*SPACING_XYZ, 1.0])
    nib.save(nib.Nifti1Image(synthetic_ct(slices, frames), affine), path)
    return path


class PeakSampler:
    """RSS of this process and its children every ``interval_s``: each one's peak and the sum's."""

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.peaks: dict[int, int] = {}
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self.me, *self.me.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
                total += rss
            self.total = max(self.total, total)
            time.sleep(self.interval_s)


def peak_rss(pid: int | str = "self") -> int:
    """The kernel's high-water mark of resident memory (VmHWM) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc: this bench needs Linux")


def reset_peak_rss() -> None:
    """Start this process' VmHWM again from its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def wait(ms: float) -> None:
    """Run the Qt event loop for ``ms`` milliseconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(round(ms), loop.quit)
    loop.exec()


def scroll(viewer, seconds: float, interval_ms: int) -> dict:
    """Step the first non-displayed spatial axis by one slice every ``interval_ms``."""
    from heartbeat import EventLoopMonitor
    from qtpy.QtCore import QTimer

    axis = viewer.dims.not_displayed[-1]
    steps = viewer.dims.nsteps[axis]
    position = [steps // 4]

    def step() -> None:
        position[0] = steps // 4 + (position[0] + 1 - steps // 4) % (steps // 2)
        viewer.dims.set_current_step(axis, position[0])

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(step)
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
    monitor.start()
    timer.start()
    wait(seconds * 1000)
    timer.stop()
    monitor.stop()
    return {**monitor.summary(), "slices_shown": round(seconds * 1000 / interval_ms)}


def segment(viewer, layer, model: Path) -> dict:
    """Run the Segment dock on ``layer``; napari's and the worker's peaks while it runs."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.add_model_source(model)
    widget.image_combo.value = layer
    wait(500)
    gc_collect()
    before = peak_rss()
    reset_peak_rss()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        widget.run()
        while widget.runner.running:
            wait(50)
    seconds = time.perf_counter() - started
    napari_peak = peak_rss()
    workers = [pid for pid in sampler.peaks if pid != os.getpid()]
    worker_peak = sum(peak_rss(pid) for pid in workers)
    labels = widget.output_layers[0] if widget.output_layers else None
    return {
        "seconds": round(seconds, 1),
        "status": widget.status.text(),
        "labels_dtype": None if labels is None else str(labels.data.dtype),
        "napari_rss_before_mb": round(before / MB),
        "napari_peak_mb": round(napari_peak / MB),
        "worker_peak_mb": round(worker_peak / MB),
        "sum_of_peaks_mb": round((napari_peak + worker_peak) / MB),
        "sampled_total_peak_mb": round(sampler.total / MB),
    }


def gc_collect() -> None:
    import gc

    gc.collect()


def child(
    path: Path, seconds: float, interval_ms: int, model: Path | None, shots: Path | None
) -> dict:
    """Open ``path`` in a fresh napari, scroll it, segment it with ``model``; the figures.

    With ``shots``, the window is saved there as ``<file>.png`` at the end, to look at.
    """
    import napari

    viewer = napari.Viewer(title="napari-medai big scan bench")
    wait(1000)
    idle = peak_rss()
    started = time.perf_counter()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    wait(0)
    opened_s = time.perf_counter() - started
    wait(1000)
    volume_bytes = layer.data.nbytes
    opened_peak = peak_rss()
    result = {
        "file": path.name,
        "shape": list(layer.data.shape),
        "dtype": str(layer.data.dtype),
        "volume_mb": round(volume_bytes / MB),
        "napari_idle_peak_mb": round(idle / MB),
        "open_s": round(opened_s, 2),
        "open_peak_mb": round(opened_peak / MB),
        "open_peak_x_volume": round(opened_peak / volume_bytes, 2),
        "scrolling": scroll(viewer, seconds, interval_ms),
    }
    if model is not None:
        run = segment(viewer, layer, model)
        run["sum_of_peaks_x_volume"] = round(run["sum_of_peaks_mb"] * MB / volume_bytes, 2)
        run["sampled_total_x_volume"] = round(run["sampled_total_peak_mb"] * MB / volume_bytes, 2)
        result["segment"] = run
    if shots is not None:
        wait(1000)
        viewer.window._qt_window.grab().save(str(shots / f"{path.stem}.png"))
    viewer.close()
    return result


def run_child(path: Path, args: argparse.Namespace, model: Path | None) -> dict:
    """:func:`child` in a fresh process, so its peaks are its own."""
    command = [sys.executable, __file__, "--child", str(path), "--seconds", str(args.seconds)]
    command += ["--interval", str(args.interval)]
    if model is not None:
        command += ["--model", str(model)]
    if args.screenshots is not None:
        command += ["--screenshots", str(args.screenshots)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"file": path.name, "error": done.stderr.strip().splitlines()[-5:]}
    return json.loads(lines[-1])


def tiny_model(folder: Path) -> Path:
    """The tests' tiny two-class UNet at 8 mm (every scan is resampled into it and back)."""
    from cohort_scans import save_tiny_model

    return save_tiny_model(folder / "model")


def growth(runs: list[dict], key: str) -> dict | None:
    """Least-squares MB per 100 slices and intercept of a peak over the 3D sizes."""
    points = [(r["shape"][0], r[key]) for r in runs if key in r]
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit(*zip(*points), 1)
    return {"mb_per_100_slices": round(float(slope) * 100, 1), "intercept_mb": round(intercept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=int, default=50, help="ms between slice steps")
    parser.add_argument("--no-segment", dest="segment", action="store_false")
    parser.add_argument("--no-4d", dest="four_d", action="store_false")
    parser.add_argument("--screenshots", type=Path, help="folder for a PNG of each window")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        shots = args.screenshots
        print(json.dumps(child(args.child, args.seconds, args.interval, args.model, shots)))
        return
    with tempfile.TemporaryDirectory(prefix="big_scan_") as temporary:
        folder = Path(temporary)
        model = tiny_model(folder) if args.segment else None
        sizes = sorted(set(args.sizes))
        runs = [run_child(write_scan(folder, n), args, model) for n in sizes]
        for path in folder.glob("*.nii"):
            path.unlink()
        compared = run_child(write_scan(folder, SCROLL_COMPARED), args, None)
        four_d = None
        if args.four_d:
            series = write_scan(folder, max(sizes) // FRAMES, FRAMES)
            four_d = run_child(series, args, None)
    segments = [{"shape": r["shape"], **r["segment"]} for r in runs if "segment" in r]
    print(
        json.dumps(
            {
                "scans": runs,
                "scrolling_compared": compared,
                "four_d": four_d,
                "growth": {
                    "open_peak": growth(runs, "open_peak_mb"),
                    "segment_sum_of_peaks": growth(segments, "sum_of_peaks_mb"),
                },
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
