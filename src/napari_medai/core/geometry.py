"""Physical geometry of a voxel grid, in (z, y, x) order and LPS millimetres.

:meth:`Geometry.affine` is the only place that builds the napari affine
(``direction @ diag(spacing)`` plus origin); :mod:`napari_medai.core.volume`
holds the only pair of functions that convert to and from SimpleITK.
:func:`lps_from_ras` and :meth:`Geometry.from_ras_affine` are the only LPS<->RAS
conversions (nibabel, NIfTI and FreeSurfer state positions in RAS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: napari world axis labels for (z, y, x) in LPS: axis 0 grows to the patient's
#: head (S), axis 1 to the back (P), axis 2 to the patient's left (L).
WORLD_AXIS_LABELS = ("S (z)", "P (y)", "L (x)")

#: SimpleITK's own tolerance for "same grid" checks.
GEOMETRY_TOLERANCE = 1e-6

#: Reverses the order of (x, y, z, 1) homogeneous coordinates to (z, y, x, 1) (its own inverse).
_XYZ_ZYX = np.eye(4)[[2, 1, 0, 3]]


def lps_from_ras(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with its (x, y) rows negated: RAS coordinates become LPS, and back.

    Takes any matrix whose first rows are x and y (a 3x3 direction, a 4x4 affine
    in (x, y, z) order): L = -R and P = -A, so the conversion is its own inverse.
    """
    flipped = np.array(matrix, dtype=np.float64)
    flipped[:2] *= -1.0
    return flipped


#: The same flip read the other way (RAS from LPS).
ras_from_lps = lps_from_ras


def _as_array(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.array(values, dtype=np.float64).reshape(shape)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Geometry:
    """Spacing, origin and direction of a 3D grid, all in (z, y, x) order.

    ``direction`` columns are the world (z, y, x) unit vectors of the array axes
    (z, y, x). A sheared grid (gantry tilt) has non-orthogonal columns; such a
    grid is exact in napari but cannot be written by SimpleITK.
    """

    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", _as_array(self.spacing, (3,)))
        object.__setattr__(self, "origin", _as_array(self.origin, (3,)))
        object.__setattr__(self, "direction", _as_array(self.direction, (3, 3)))
        if np.any(self.spacing <= 0):
            raise ValueError(f"spacing must be positive, got {self.spacing.tolist()}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.is_close(other)

    def is_close(self, other: Geometry, tol: float = GEOMETRY_TOLERANCE) -> bool:
        """Whether both grids agree to ``tol`` (mm for origin/spacing)."""
        return bool(
            np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol, rtol=0)
        )

    @property
    def is_orthonormal(self) -> bool:
        """False for sheared grids, which NIfTI/NRRD/MHA writers cannot hold."""
        return bool(np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-6))

    def affine(self) -> np.ndarray:
        """The 4x4 index->world matrix in (z, y, x) order, as napari takes it."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """World (z, y, x) points in mm for (N, 3) voxel indices in (z, y, x)."""
        index = np.atleast_2d(np.asarray(index, dtype=np.float64))
        return index @ (self.direction @ np.diag(self.spacing)).T + self.origin

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (accounts for shear)."""
        return float(abs(np.linalg.det(self.direction @ np.diag(self.spacing))) / 1000.0)

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly form (lists in (z, y, x) order)."""
        return {
            "spacing": self.spacing.tolist(),
            "origin": self.origin.tolist(),
            "direction": self.direction.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(data["spacing"], data["origin"], data["direction"])

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> Geometry:
        """Inverse of :meth:`affine` (column norms become the spacing)."""
        affine = np.asarray(affine, dtype=np.float64)
        linear = affine[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        return cls(spacing, affine[:3, 3], linear / spacing)

    def ras_affine(self) -> np.ndarray:
        """The 4x4 voxel (i, j, k) = (x, y, z) -> RAS mm affine, as nibabel and NIfTI state it."""
        return ras_from_lps(_XYZ_ZYX @ self.affine() @ _XYZ_ZYX)

    @classmethod
    def from_ras_affine(cls, affine: np.ndarray) -> Geometry:
        """Inverse of :meth:`ras_affine`: the grid of a nibabel image (``image.affine``)."""
        return cls.from_affine(_XYZ_ZYX @ lps_from_ras(affine) @ _XYZ_ZYX)
