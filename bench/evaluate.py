"""Benchmark: evaluation metrics for a 512x512x300 prediction/reference pair with 5 labels.

The reference holds five ellipsoids from liver to kidney size at 0.8 x 0.8 x 1.5 mm;
the prediction is the reference moved by 2 voxels and with one organ grown by a
voxel, so every metric has work to do. Reports the wall time of
:func:`evaluate_job` and where it goes (cProfile of a second run, by stage).

Prints one JSON object. Usage: ``python bench/evaluate.py``.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import time

import numpy as np
from scipy import ndimage

from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job
from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SHAPE = (300, 512, 512)
SPACING = (1.5, 0.8, 0.8)
#: (centre z, y, x) in voxels and semi-axes in mm: liver, spleen, two kidneys, aorta-like.
ORGANS = [
    ((150, 250, 180), (90, 100, 80)),
    ((160, 260, 380), (50, 60, 45)),
    ((120, 330, 160), (40, 30, 30)),
    ((120, 330, 360), (40, 30, 30)),
    ((150, 220, 256), (150, 12, 12)),
]
#: Functions whose cumulative time is reported, by stage name.
STAGES = {
    "find_objects (one pass per map)": "find_objects",
    "per label, all of it (crop, counts, surfaces)": "_score",
    "MONAI get_mask_edges (erosion)": "get_mask_edges",
    "MONAI get_surface_distance (KD-tree query)": "get_surface_distance",
}


def make_pair() -> tuple[LabelMap, LabelMap]:
    """The reference and the shifted, partly grown prediction."""
    reference = np.zeros(SHAPE, dtype=np.uint8)
    for value, (centre, axes) in enumerate(ORGANS, start=1):
        box = tuple(
            slice(max(c - int(a / s) - 1, 0), min(c + int(a / s) + 2, n))
            for c, a, s, n in zip(centre, axes, SPACING, SHAPE)
        )
        grid = np.ogrid[box]
        inside = (
            sum(((g - c) * s / a) ** 2 for g, c, s, a in zip(grid, centre, SPACING, axes)) <= 1.0
        )
        reference[box][inside] = value
    prediction = np.roll(reference, 2, axis=2)
    grown = ndimage.binary_dilation(prediction == 2, iterations=1)
    prediction[grown & (prediction == 0)] = 2
    geometry = Geometry(SPACING, (0.0, 0.0, 0.0))
    return LabelMap(prediction, geometry), LabelMap(reference, geometry)


def main() -> None:
    prediction, reference = make_pair()
    config = EvaluationConfig(tolerance_mm=2.0)
    run_job(evaluate_job(prediction, reference, config))  # warm imports (torch, MONAI)
    started = time.perf_counter()
    result = run_job(evaluate_job(prediction, reference, config))
    seconds = time.perf_counter() - started
    profiler = cProfile.Profile()
    profiler.enable()
    run_job(evaluate_job(prediction, reference, config))
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    profiled = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    stages = {}
    for stage, name in STAGES.items():
        stages[stage] = round(
            sum(ct for (_, _, func), (_, _, _, ct, _) in stats.items() if func.startswith(name)),
            2,
        )
    print(
        json.dumps(
            {
                "benchmark": "evaluate",
                "shape_zyx": list(SHAPE),
                "labels": len(ORGANS),
                "seconds": round(seconds, 2),
                "profiled_seconds": round(profiled, 2),
                "cumulative_seconds_by_stage": stages,
                "dice": {s.value: round(s.dice, 4) for s in result.labels},
                "hd95_mm": {s.value: round(s.hd95_mm, 2) for s in result.labels},
                "load_average": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
