"""Benchmark: deepbet brain extraction through the plugin's pipeline, on the CPU.

The shared data holds the 2 mm MNI template (91 x 109 x 91); the 1 mm template
the issue names (182 x 218 x 182) is made from it by linear resampling onto
the 1 mm grid of the same extent, which has the 1 mm size, so the timing is
representative. Reports model load, the segmentation job, and the brain volume.

Prints one JSON object. Usage: ``python bench/brain.py`` (needs the ``brain``
extra and ``NAPARI_MEDAI_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.deepbet import load_deepbet
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.volume import volume_from_sitk, volume_to_sitk

DATA = Path(
    os.environ.get("NAPARI_MEDAI_DATA", Path(__file__).parents[1] / ".." / "shared" / "data")
)
TEMPLATE = DATA / "nifti_nimh" / "avg152T1_LR_nifti.nii.gz"


def one_millimetre(volume):
    """The template resampled to 1 mm voxels over the same field of view."""
    image = volume_to_sitk(volume.with_array(volume.array.astype(np.float32)))
    size = [int(round(n * s)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    resampled = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (1.0, 1.0, 1.0),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return volume_from_sitk(resampled, {"name": "avg152T1 at 1 mm", "modality": "MR"})


def main() -> None:
    """Time model loading and segmentation at 2 mm and 1 mm."""
    start = time.perf_counter()
    model = load_deepbet()
    load_s = time.perf_counter() - start
    template = read_volume(TEMPLATE)
    runs = []
    for volume in (template, one_millimetre(template)):
        start = time.perf_counter()
        result = run_job(segment_job(volume, model, SegmentConfig(device="cpu")))
        runs.append(
            {
                "grid_zyx": list(volume.spatial_shape),
                "spacing_zyx_mm": volume.geometry.spacing.tolist(),
                "wall_s": round(time.perf_counter() - start, 2),
                "brain_ml": round(
                    float((result.labels.array == 1).sum()) * volume.geometry.voxel_volume_ml(), 1
                ),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "brain",
                "command": "python bench/brain.py",
                "model_load_s": round(load_s, 2),
                "runs": runs,
                "cpu_count": os.cpu_count(),
                "load_avg": os.getloadavg(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
