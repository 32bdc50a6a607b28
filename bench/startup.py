"""Benchmark: how fast napari-medai starts (issue 11, item 8).

Every figure comes from a fresh Python process, as a user meets it the first
time in a session (the operating system's file cache is warm after the first
run, as it is for a user who has started Python before):

- ``docks_s``: seconds from clicking a dock in the Plugins menu to the dock on
  screen, for each widget in the manifest, each in a new napari window
  (``add_plugin_dock_widget``, then the event loop until it is painted).
  Goal: under 1.5 s each.
- ``cli_help_s``: ``napari-medai --help``, process start to exit. Goal: under 1 s.
- ``napari_start_s``: ``napari`` with plugin discovery, up to a shown, painted
  window, with the plugin enabled and disabled (npe2's ``disable``, as napari's
  plugin manager does); ``napari_start_overhead_s`` is the difference of the
  medians. Goal: under 0.5 s.
- Every figure is a median over ``--repeats`` runs, as wall-clock seconds and
  as CPU seconds of the process (``cpu``), which a busy machine disturbs far
  less than wall-clock time.
- ``heavy_modules_after_docks``: torch, MONAI... loaded once every dock is open
  (should be none; they load when a job starts).

Each process is run ``--repeats`` times (the median is reported), alternating
with and without the plugin. Without a display it runs on a private Xvfb
server. The machine may be shared: the 1-minute load average is reported.

Prints one JSON object. Usage: ``python bench/startup.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
MANIFEST = SRC / "napari_medai" / "napari.yaml"
HEAVY = ("torch", "monai", "matplotlib", "highdicom", "ray", "pydicom", "pandas")

_SHOW_VIEWER = """
import time, json, sys
started = time.perf_counter()
import napari
from napari.plugins import _initialize_plugins
from npe2 import PluginManager
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QApplication

def settle(ms=0):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()

if DISABLE:
    PluginManager.instance().disable("napari-medai")
_initialize_plugins()
viewer = napari.Viewer(show=True)
settle()
shown = time.perf_counter() - started
shown_cpu = time.process_time()
"""


def run_python(code: str, timeout: float = 300.0) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter with this checkout first; (wall seconds, stdout)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        # napari keeps its settings in memory: the plugin's first start (which sets
        # reader preferences) never changes the user's settings.
        "NAPARI_CONFIG": "",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def dock_seconds(name: str) -> dict:
    """Open the dock ``name`` in a new napari window; seconds until it is painted."""
    code = textwrap.dedent(_SHOW_VIEWER).replace("DISABLE", "False") + textwrap.dedent(
        f"""
        settle(300)
        t0, c0 = time.perf_counter(), time.process_time()
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", {name!r})
        QApplication.processEvents()
        settle()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        viewer.close()
        print(json.dumps({{"seconds": seconds, "cpu": cpu, "heavy": heavy}}))
        """
    )
    return last_json(run_python(code)[1])


def napari_start_seconds(disable: bool) -> dict:
    """Process start to a shown napari window, with the plugin enabled or not: wall and CPU s."""
    code = textwrap.dedent(_SHOW_VIEWER).replace("DISABLE", str(disable)) + textwrap.dedent(
        """
        viewer.close()
        print(json.dumps({"seconds": shown, "cpu": shown_cpu}))
        """
    )
    return last_json(run_python(code)[1])


def cli_help_seconds() -> float:
    """``napari-medai --help``: the console script's own import and call, process wall time."""
    code = "import sys; from napari_medai.cli import main; sys.exit(main(['--help']))"
    return run_python(code)[0]


def _medians(runs: list[dict]) -> dict:
    return {
        "wall": round(statistics.median(r["seconds"] for r in runs), 2),
        "cpu": round(statistics.median(r["cpu"] for r in runs), 2),
        "wall_runs": [round(r["seconds"], 2) for r in runs],
    }


def measure(repeats: int) -> dict:
    contributions = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))["contributions"]
    widgets = [widget["display_name"] for widget in contributions["widgets"]]
    loads = [os.getloadavg()[0]]
    with_plugin, without_plugin = [], []
    for _ in range(repeats):
        with_plugin.append(napari_start_seconds(disable=False))
        without_plugin.append(napari_start_seconds(disable=True))
    loads.append(os.getloadavg()[0])
    docks: dict[str, list[dict]] = {name: [] for name in widgets}
    heavy: set[str] = set()
    for _ in range(repeats):
        for name in widgets:
            result = dock_seconds(name)
            docks[name].append(result)
            heavy.update(result["heavy"])
    loads.append(os.getloadavg()[0])
    help_runs = [cli_help_seconds() for _ in range(repeats)]
    loads.append(os.getloadavg()[0])
    start = {"with_plugin": _medians(with_plugin), "without_plugin": _medians(without_plugin)}
    return {
        "docks_s": {name: _medians(runs) for name, runs in docks.items()},
        "cli_help_s": round(statistics.median(help_runs), 2),
        "cli_help_runs_s": [round(t, 2) for t in help_runs],
        "napari_start_s": start,
        "napari_start_overhead_s": {
            kind: round(start["with_plugin"][kind] - start["without_plugin"][kind], 2)
            for kind in ("wall", "cpu")
        },
        "heavy_modules_after_docks": sorted(heavy),
        "goals_s": {"dock": 1.5, "cli_help": 1.0, "napari_start_overhead": 0.5},
        "repeats": repeats,
        "cpu_cores": os.cpu_count(),
        "load_average_1min": [round(load, 2) for load in loads],
    }


@contextlib.contextmanager
def display() -> Iterator[None]:
    """The current display, or a private Xvfb server kept up for the whole benchmark.

    (``scripts/launch_demo.py``'s ``headless_display`` lets its server end 10 s after
    the last client left, and a fresh napari may take longer than that to
    connect on a busy machine.)
    """
    if os.environ.get("DISPLAY"):
        yield
        return
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1600x1000x24"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        os.environ["DISPLAY"] = ":" + pipe.readline().strip()
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median shown)")
    args = parser.parse_args()
    with display():
        result = measure(args.repeats)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
