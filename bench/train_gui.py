"""Few-slice training through the Train dock against the CLI: same Dice in the same wall time?

Issue 22's goal: the GUI reaches the CLI's Dice (within 0.01) in the same wall
time, with the slice slider stall-free (< 100 ms) while it trains. The case is
``bench/train_sparse.py``'s (imported, not copied): the real TotalSegmentator
CT (``ct``) or MR (``mr``), the liver painted on three axial slices, Dice on
the slices nobody painted, measured by running the saved model through core's
``segment_job`` outside napari.

One napari window, sized to the screen (run it under ``xvfb-run -a -s "-screen
0 1366x768x24"``; without a display a private Xvfb is started), holds the scan
and the 3-slice label map as layers and docks Train from the plugin manifest.
For every budget, clock and seed, in the same run and interleaved (the order
alternates, so both see the same load), the bench:

- GUI: sets the dock's time budget, what it counts, seed, CPU threads and
  output folder, clicks Train, steps the slice slider every ``--scroll-ms``
  while a 10 ms heartbeat (``tests/helpers/heartbeat.py``) records every late
  tick, and waits until the dock is idle again. Wall time is click to idle, as
  a user sees it; the first run also starts the dock's worker process (torch
  is imported there once per session).
- CLI: runs ``napari-medai train SCAN LABELS --out M --max-time B
  --budget-clock C --threads T --seed S`` as a subprocess, on the same scan file
  and the same painted slices written to NIfTI. Wall time is start to exit (it
  includes starting Python and importing torch every time).

Both get the same number of torch threads: before each pair the dock's
"auto (N)" is read and both runs get that N. Steps are the optimizer steps each
run took (its last checkpoint's state); CPU seconds are napari's process and
its worker's for the GUI, the subprocess's for the CLI. The dock's worker runs
below napari's CPU priority (``core/job_worker.py``), the CLI at the shell's.
The same scrolling with nothing training is measured before and after the
runs (``scrolling_without_training``): napari's own stalls on this display.

Prints one JSON object. Usage: ``python bench/train_gui.py [--case ct]
[--budgets 5 10] [--clocks wall cpu] [--seeds 0 1 2] [--scroll-ms 50]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The heartbeat is test tooling, the headless display belongs to the demo launcher and the
# case is train_sparse's: none of them ships in the package.
sys.path[:0] = [str(REPO / "tests" / "helpers"), str(REPO / "scripts"), str(REPO / "bench")]

import train_sparse  # noqa: E402

PLUGIN = "napari-medai"
#: How often the simulated user moves the slice slider one slice (a steady scroll).
SLIDER_STEP_MS = 50
#: The goal's bounds: Dice within this of the CLI's, and no stall longer than this.
DICE_TOLERANCE = 0.01
STALL_GOAL_MS = 100.0
CLI = Path(sys.executable).with_name("napari-medai")


def last_steps(out: Path) -> int:
    """Optimizer steps a run took: the iteration of its last checkpoint."""
    from napari_medai.core.training.checkpoints import read_state
    from napari_medai.core.training.config import checkpoints_folder

    return int(read_state(checkpoints_folder(out, None))["iteration"])


def card_training(out: Path) -> dict:
    """The training facts the saved model's card records (threads, clock, seed...)."""
    from napari_medai.core.models.card import CARD_FILE, ModelCard

    return ModelCard.read(out / CARD_FILE).training


class Setting(NamedTuple):
    """One training asked of both: a budget in seconds of ``clock``, and a seed."""

    budget: float
    clock: str
    seed: int


def worker_cpu_s() -> float:
    """CPU seconds the dock's worker process has used so far (0 before it starts)."""
    import psutil

    workers = [
        child
        for child in psutil.Process().children()
        if "napari_medai.core.job_worker" in " ".join(child.cmdline())
    ]
    return sum(sum(worker.cpu_times()[:2]) for worker in workers)


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the CLI runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(files: tuple[Path, Path], out: Path, setting: Setting, threads: int) -> dict:
    """Train through ``napari-medai train``; wall time from start to exit, and its CPU time."""
    command = [str(CLI), "train", *map(str, files), "--out", str(out)]
    command += ["--max-time", f"{setting.budget:g}", "--budget-clock", setting.clock]
    command += ["--threads", str(threads), "--seed", str(setting.seed), "--device", "cpu"]
    load = os.getloadavg()[0]
    cpu = children_cpu_s()
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "cli_cpu_s": round(children_cpu_s() - cpu, 2),
        "load_avg_1min_before": round(load, 2),
    }


class Dock:
    """napari with the scan, the painted slices and the Train dock, driven as a user would."""

    def __init__(self, scan, sparse, scroll_ms: int) -> None:
        from napari.layers import Layer
        from napari.viewer import Viewer

        from napari_medai._napari.layers import image_layer_data, labels_layer_data

        self.viewer = Viewer(title="napari-medai: Train dock against the CLI")
        window = self.viewer.window._qt_window
        window.setGeometry(window.screen().availableGeometry())  # Xvfb has no window manager
        image = self.viewer.add_layer(Layer.create(*image_layer_data(scan)))
        labels = self.viewer.add_layer(Layer.create(*labels_layer_data(sparse, "liver painted")))
        _dock, self.widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
        self.widget.pair_rows[0].image_combo.value = image
        self.widget.pair_rows[0].labels_combo.value = labels
        self.slices = scan.spatial_shape[0]
        self.scroll_ms = scroll_ms
        self._direction = 1
        self.wait(1500)  # as a user would: the window is drawn before anything is clicked

    @staticmethod
    def wait(ms: float) -> None:
        from qtpy.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(round(ms), loop.quit)
        loop.exec()

    def auto_threads(self) -> int:
        """What the dock's "auto (N)" means now."""
        return self.widget.auto_threads()

    def _step_slider(self) -> None:
        """One slice on, bouncing between the first and the last slice."""
        dims = self.viewer.dims
        z = dims.current_step[0] + self._direction
        if not 0 <= z < self.slices:
            self._direction = -self._direction
            z = dims.current_step[0] + self._direction
        dims.set_current_step(0, z)

    def _measured(self, action, until) -> dict:
        """Scroll and run the heartbeat from ``action()`` until ``until`` (an event loop) ends."""
        from heartbeat import EventLoopMonitor
        from qtpy.QtCore import QTimer

        self._direction = 1
        slider = QTimer()
        slider.setInterval(self.scroll_ms)
        slider.timeout.connect(self._step_slider)
        monitor = EventLoopMonitor(interval_ms=10, threshold_ms=50.0)
        load = os.getloadavg()[0]
        worker_cpu, napari_cpu = worker_cpu_s(), time.process_time()
        monitor.start()
        if self.scroll_ms:
            slider.start()
        started = time.perf_counter()
        action()
        until.exec()
        wall = time.perf_counter() - started
        napari_cpu = time.process_time() - napari_cpu
        slider.stop()
        monitor.stop()
        return {
            "wall_s": round(wall, 2),
            "worker_cpu_s": round(worker_cpu_s() - worker_cpu, 2),
            "napari_cpu_s": round(napari_cpu, 2),
            "worst_stall_ms": round(monitor.worst_stall_ms, 1),
            "p99_stall_ms": monitor.p99_stall_ms(),
            "stalls_over_100ms": [
                [round(s.at_s, 2), round(s.ms)] for s in monitor.stalls if s.ms > STALL_GOAL_MS
            ],
            "load_avg_1min_before": round(load, 2),
        }

    def scroll_alone(self, seconds: float) -> dict:
        """The same scrolling with nothing training: napari's own share of the stalls."""
        from qtpy.QtCore import QEventLoop, QTimer

        until = QEventLoop()
        return self._measured(lambda: QTimer.singleShot(round(seconds * 1000), until.quit), until)

    def train(self, out: Path, setting: Setting, threads: int) -> dict:
        """Click Train with these settings, scroll while it trains, return time and stalls."""
        from qtpy.QtCore import QEventLoop

        widget = self.widget
        widget.time_spin.value = setting.budget
        widget.clock_combo.value = setting.clock
        widget.iterations_spin.value = 0
        widget.seed_edit.value = str(setting.seed)
        widget.threads_combo.value = threads
        widget.output_edit.value = str(out)
        done = QEventLoop()

        def quit_when_idle(running: bool) -> None:
            if not running:
                done.quit()

        widget.runner.runningChanged.connect(quit_when_idle)
        measured = self._measured(widget.train_button.native.click, done)
        widget.runner.runningChanged.disconnect(quit_when_idle)
        self.wait(300)
        return {"outcome": str(widget.runner.outcome.value), **measured}


def inputs_for_cli(case: str, sparse, folder: Path) -> tuple[Path, Path]:
    """The real scan file and the painted slices written beside it in NIfTI."""
    from napari_medai.core.io.writing import write_label_map

    scan_file = train_sparse.DATA / "totalsegmentator" / train_sparse.CASES[case][0]
    return scan_file, write_label_map(sparse, folder / f"{case}_painted.nii.gz")


def pair_runs(dock: Dock, files, scratch: Path, setting: Setting, gui_first: bool):
    """One GUI and one CLI run of this setting on the same threads, in the given order."""
    threads = dock.auto_threads()
    name = f"{setting.budget:g}{setting.clock}_seed{setting.seed}"
    outs = {way: scratch / f"{way}_{name}" for way in ("gui", "cli")}
    runs = {}
    for way in ("gui", "cli") if gui_first else ("cli", "gui"):
        if way == "gui":
            runs[way] = dock.train(outs[way], setting, threads)
        else:
            runs[way] = run_cli(files, outs[way], setting, threads)
    for way, out in outs.items():
        info = card_training(out)
        runs[way] |= {
            "steps": last_steps(out),
            "best_step": info["iterations"],
            "training_time_s": info["training_time_s"],
            "torch_threads": info["threads"],
            "budget_clock": info["budget_clock"],
            "seed": info["seed"],
            "batch_size": info["batch_size"],
            "learning_rate": info["learning_rate"],
            "augmentation": info["augmentation_strengths"],
        }
    return {**setting._asdict(), "order": list(runs), **runs}, outs


def score(pairs: list[tuple[dict, dict]], case_data) -> None:
    """Dice on the unpainted slices of every saved model (in this process, after all runs)."""
    scan, liver, painted, _sparse = case_data
    for run, outs in pairs:
        for way, out in outs.items():
            run[way]["dice_unpainted"] = round(
                train_sparse.dice_off_painted(scan, liver, painted, out), 4
            )
        run["dice_gap_gui_minus_cli"] = round(
            run["gui"]["dice_unpainted"] - run["cli"]["dice_unpainted"], 4
        )


def summary(runs: list[dict]) -> dict:
    """Per budget: mean Dice, steps and wall time of each way, the worst stall of the GUI."""
    out = {}
    for budget, clock in sorted({(r["budget"], r["clock"]) for r in runs}):
        these = [r for r in runs if (r["budget"], r["clock"]) == (budget, clock)]
        row = {}
        for way in ("gui", "cli"):
            for key in ("dice_unpainted", "steps", "wall_s"):
                row[f"{way}_mean_{key}"] = round(float(np.mean([r[way][key] for r in these])), 3)
        row["worst_stall_ms"] = max(r["gui"]["worst_stall_ms"] for r in these)
        row["worst_p99_stall_ms"] = max(r["gui"]["p99_stall_ms"] for r in these)
        gaps = [r["dice_gap_gui_minus_cli"] for r in these]
        row["goal_met"] = (
            abs(float(np.mean(gaps))) <= DICE_TOLERANCE and row["worst_stall_ms"] < STALL_GOAL_MS
        )
        out[f"{budget:g} {clock} s"] = row
    return out


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    from qtpy.QtWidgets import QApplication

    case_data = train_sparse.three_slice_liver(train_sparse.DATA, args.case)
    scan, _liver, painted, sparse = case_data
    files = inputs_for_cli(args.case, sparse, scratch)
    dock = Dock(scan, sparse, args.scroll_ms)
    baseline = [dock.scroll_alone(args.baseline_s)]
    settings = [Setting(b, c, s) for b in args.budgets for c in args.clocks for s in args.seeds]
    pairs = [
        pair_runs(dock, files, scratch, setting, number % 2 == 0)
        for number, setting in enumerate(settings)
    ]
    baseline.append(dock.scroll_alone(args.baseline_s))
    screen = QApplication.primaryScreen().size()
    dock.viewer.close()
    score(pairs, case_data)
    runs = [run for run, _outs in pairs]
    return {
        "case": f"totalsegmentator/{train_sparse.CASES[args.case][0]}, liver",
        "shape_zyx": list(scan.spatial_shape),
        "painted_slices": painted,
        "screen": [screen.width(), screen.height()],
        "qt_platform": QApplication.platformName(),
        "scrolling_without_training": baseline,
        "by_budget": summary(runs),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(train_sparse.CASES), default="ct")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--clocks", nargs="+", choices=("wall", "cpu"), default=["wall"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--baseline-s",
        type=float,
        default=8.0,
        help="seconds of scrolling with nothing training, before and after the runs",
    )
    parser.add_argument(
        "--scroll-ms",
        type=int,
        default=SLIDER_STEP_MS,
        help="move the slice slider one slice this often while the dock trains (0: never)",
    )
    args = parser.parse_args()
    from launch_demo import has_display, headless_display

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="napari-medai-train-gui-") as scratch:
        # Models go to a throw-away folder, not the user's model list.
        os.environ["NAPARI_MEDAI_MODELS"] = str(Path(scratch) / "models")
        # napari prints its notifications to stdout; this program's stdout is the JSON.
        display = contextlib.nullcontext() if has_display() else headless_display()
        with contextlib.redirect_stdout(sys.stderr), display:
            result = measure(args, Path(scratch))
    report = {
        "benchmark": "train_gui",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "slider_step_ms": args.scroll_ms,
        "heartbeat_interval_ms": 10,
        "goal": f"GUI Dice within {DICE_TOLERANCE} of the CLI's, worst stall < {STALL_GOAL_MS} ms",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        **result,
    }
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
