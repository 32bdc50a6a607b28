"""A deterministic synthetic abdominal CT with organ labels.

Organs are ellipsoids placed in patient (LPS) millimetres, so they sit on the
right side of the patient whatever the grid's direction: the phantom doubles
as an orientation test. Hand-written because no library ships such a phantom
with labels, a chosen grid and realistic Hounsfield units.
"""

from __future__ import annotations

import numpy as np

from napari_medai.core.geometry import Geometry, lps_from_ras
from napari_medai.core.volume import LabelMap, Volume

#: Label value -> (name, HU, centre LPS mm from the body centre, semi-axes mm).
ORGANS: dict[int, tuple[str, float, tuple[float, float, float], tuple[float, float, float]]] = {
    1: ("liver", 60.0, (-55.0, -10.0, 20.0), (60.0, 50.0, 45.0)),
    2: ("spleen", 45.0, (75.0, 30.0, 25.0), (25.0, 35.0, 30.0)),
    3: ("kidney_right", 30.0, (-55.0, 45.0, -25.0), (22.0, 22.0, 35.0)),
    4: ("kidney_left", 30.0, (55.0, 45.0, -20.0), (22.0, 22.0, 35.0)),
    5: ("vertebra", 500.0, (0.0, 70.0, 0.0), (18.0, 18.0, 200.0)),
}
LABEL_NAMES = {0: "background", **{value: spec[0] for value, spec in ORGANS.items()}}


def phantom_geometry(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
    """A grid stored along RAS (x and y flipped in LPS) and rotated 10 degrees about z.

    That is the kind of direction a NIfTI converter writes, plus an oblique
    turn, so code that ignores the direction lands organs on the wrong side.
    """
    angle = np.deg2rad(10.0)
    rotation_xyz = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    direction_xyz = lps_from_ras(rotation_xyz)
    direction = direction_xyz[::-1, ::-1]
    centre_index = (np.array(shape) - 1) / 2.0
    origin = -(direction @ np.diag(spacing) @ centre_index)
    return Geometry(spacing, origin, direction)


def make_phantom(
    shape: tuple[int, int, int] = (40, 128, 128),
    spacing: tuple[float, float, float] = (5.0, 2.5, 2.5),
    seed: int = 0,
) -> tuple[Volume, LabelMap]:
    """Return a CT phantom (int16 HU) and its organ label map on the same grid."""
    geometry = phantom_geometry(shape, spacing)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = geometry.index_to_world(index.reshape(-1, 3)).reshape(*shape, 3)
    z, y, x = world[..., 0], world[..., 1], world[..., 2]

    ct = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / 160.0) ** 2 + (y / 115.0) ** 2 <= 1.0
    ct[body] = -90.0
    muscle = body & ((x / 135.0) ** 2 + (y / 95.0) ** 2 >= 1.0)
    ct[muscle] = 45.0
    labels = np.zeros(shape, dtype=np.uint8)
    for value, (_name, hu, centre, axes) in ORGANS.items():
        inside = (
            ((x - centre[0]) / axes[0]) ** 2
            + ((y - centre[1]) / axes[1]) ** 2
            + ((z - centre[2]) / axes[2]) ** 2
        ) <= 1.0
        inside &= body
        ct[inside] = hu
        labels[inside] = value
    rng = np.random.default_rng(seed)
    ct += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    metadata = {"modality": "CT", "name": "phantom CT", "source": "synthetic phantom"}
    volume = Volume(np.round(ct).astype(np.int16), geometry, metadata)
    label_map = LabelMap(labels, geometry, {"name": "phantom organs"}, dict(LABEL_NAMES))
    return volume, label_map
