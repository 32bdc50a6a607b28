"""Benchmark: cohort throughput of the local engine and of Ray with 1 and 2 workers.

A cohort of ``--scans`` phantom CTs (64x128x128 at 3x2x2 mm, NIfTI) is
segmented with a small UNet package (3D, 32^3 windows at 4 mm) by
``cohort_job``: once with the local engine (one torch thread, as a Ray worker
with one CPU gets), then on a local Ray cluster with 1 and with 2 workers.
For each run it reports:

- ``scans_per_s``: scans over the whole run's wall time (start-up included:
  loading the model; for Ray starting the actors, which import torch);
- ``steady_scans_per_s``: scans between the first and the last finished scan
  over that time (start-up excluded): the rate a long cohort runs at;
- ``startup_s``: wall time until the first scan finished, minus one scan;
- ``worker_s_per_scan``: mean seconds per scan as the worker timed it
  (read, model, write, total including hashing).

``ray_overhead_per_scan_s`` is the steady seconds per scan of Ray with one
worker minus the local engine's: what Ray adds per scan (goal: under 0.2 s).
It can be negative, as a Ray worker reads and writes one scan while the model
runs on another. ``ray_init_s`` is starting the local Ray cluster once. The
machine's load average is printed with the figures: on a shared machine they
vary with it.

Prints one JSON object. Usage: ``python bench/cohort.py [--scans 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

from napari_medai.core.cohort.manifest import read_manifest
from napari_medai.core.cohort.run import EngineConfig, cohort_job
from napari_medai.core.cohort.tasks import TaskSpec
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk

SHAPE = (64, 128, 128)
SPACING = (3.0, 2.0, 2.0)


def write_inputs(root: Path, scans: int) -> tuple[Path, Path]:
    card = ModelCard(
        name="bench seg",
        architecture="UNet",
        architecture_args={"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0},
        label_names={0: "background", 1: "organ"},
        patch_size=[32, 32, 32],
        spacing=[4.0, 4.0, 4.0],
        intensity={"kind": "window", "low": -200.0, "high": 300.0},
    )
    torch.manual_seed(0)
    model = save_model_package(root / "model", card, build_network(card))
    folder = root / "scans"
    folder.mkdir()
    for index in range(scans):
        volume, _ = make_phantom(shape=SHAPE, spacing=SPACING, seed=index)
        sitk.WriteImage(volume_to_sitk(volume), str(folder / f"scan{index:03d}.nii.gz"))
    return model, folder


def measure(folder: Path, model: Path, out: Path, engine: EngineConfig) -> dict:
    items = read_manifest(folder)
    spec = TaskSpec("segment", str(model), "cpu")
    finished = []
    started = time.perf_counter()
    job = cohort_job(items, spec, out, engine)
    try:
        while True:
            event = next(job)
            if event.payload.row is not None and len(finished) < event.payload.finished:
                finished.append(time.perf_counter() - started)
    except StopIteration as stop:
        summary = stop.value
    total = time.perf_counter() - started
    if summary.done != len(items):
        raise RuntimeError(f"{summary.failed} scans failed: {summary.rows}")
    steady = (len(finished) - 1) / (finished[-1] - finished[0])
    return {
        "scans_per_s": round(len(items) / total, 3),
        "steady_scans_per_s": round(steady, 3),
        "startup_s": round(finished[0] - 1 / steady, 2),
        "total_s": round(total, 2),
        "worker_s_per_scan": {
            stage: round(sum(row["seconds"][stage] for row in summary.rows) / len(items), 3)
            for stage in ("read", "model", "write", "total")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=16)
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    result: dict = {"scans": args.scans, "shape_zyx": SHAPE, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, folder = write_inputs(root, args.scans)
        result["local"] = measure(folder, model, root / "local", EngineConfig("local"))
        mark = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        result["ray_init_s"] = round(time.perf_counter() - mark, 2)
        try:
            for workers in (1, 2):
                engine = EngineConfig("ray", workers=workers)
                out = root / f"ray{workers}"
                result[f"ray_{workers}_workers"] = measure(folder, model, out, engine)
        finally:
            ray.shutdown()
    local_s = 1 / result["local"]["steady_scans_per_s"]
    ray_s = 1 / result["ray_1_workers"]["steady_scans_per_s"]
    result["ray_overhead_per_scan_s"] = round(ray_s - local_s, 3)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
