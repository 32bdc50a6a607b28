"""The one volume model: an array in (z, y, x) order plus its :class:`Geometry`.

:func:`volume_from_sitk` and :func:`volume_to_sitk` are the only conversions
between this model and SimpleITK (axis order reversed, direction reversed on
both axes). A :class:`LabelMap` is its own type so that nothing resamples it
with anything but nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from napari_medai.core.errors import GeometryError
from napari_medai.core.geometry import Geometry

V = TypeVar("V", bound="Volume")


@dataclass(eq=False)
class Volume:
    """An image: ``array`` is (z, y, x), or (c, z, y, x) for time/channels.

    ``metadata`` holds provenance free of patient identifiers: source file
    name, modality, series description and UID, and reader warnings.
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(f"a volume is 3D or 4D, got shape {self.array.shape}")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The (z, y, x) size, without a leading channel axis."""
        return tuple(self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def modality(self) -> str:
        """DICOM-style modality ("CT", "MR", ...) or "" when unknown."""
        return str(self.metadata.get("modality", ""))

    def with_array(self: V, array: np.ndarray, **metadata: Any) -> V:
        """A copy on the same grid holding ``array`` (spatial shape must match)."""
        if array.shape[-3:] != self.spatial_shape:
            raise GeometryError(f"array shape {array.shape} does not fit grid {self.spatial_shape}")
        return replace(self, array=array, metadata={**self.metadata, **metadata})


@dataclass(eq=False)
class LabelMap(Volume):
    """An integer label map; ``label_names`` maps label values to names."""

    label_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.array.ndim != 3:
            raise ValueError(f"a label map is 3D, got shape {self.array.shape}")
        if not np.issubdtype(self.array.dtype, np.integer):
            raise TypeError(f"label maps hold integers, got {self.array.dtype}")


class _ImageBuffer:
    """Lends numpy a SimpleITK image's pixel buffer without copying it.

    SimpleITK offers a copy (``GetArrayFromImage``) or a read-only view; the
    copy doubled reading time for large scans, and painted label layers need a
    writable array. Hand-written because SimpleITK has no writable view. The
    array keeps this object, and so the image, alive.
    """

    def __init__(self, image: sitk.Image) -> None:
        self._image = image
        interface = dict(sitk.GetArrayViewFromImage(image).__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def volume_from_sitk(image: sitk.Image, metadata: dict[str, Any] | None = None) -> Volume:
    """Convert a 3D (scalar or vector) SimpleITK image to a :class:`Volume`.

    A vector pixel (several components) becomes a leading channel axis. The
    array shares the image's memory: pass an image nobody else will modify.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    array = np.asarray(_ImageBuffer(image))
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    direction_xyz = np.array(image.GetDirection()).reshape(3, 3)
    geometry = Geometry(
        spacing=image.GetSpacing()[::-1],
        origin=image.GetOrigin()[::-1],
        direction=direction_xyz[::-1, ::-1],
    )
    return Volume(array, geometry, dict(metadata or {}))


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a 3D :class:`Volume` (or :class:`LabelMap`) to SimpleITK."""
    if volume.array.ndim != 3:
        raise ValueError("only 3D volumes convert to SimpleITK images")
    geometry = volume.geometry
    if not geometry.is_orthonormal:
        raise GeometryError(
            "this grid is sheared (gantry tilt); resample it onto a regular grid first"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(geometry.spacing[::-1].tolist())
    image.SetOrigin(geometry.origin[::-1].tolist())
    image.SetDirection(geometry.direction[::-1, ::-1].ravel().tolist())
    return image


def label_map_from_sitk(image: sitk.Image, label_names: dict[int, str] | None = None) -> LabelMap:
    """Convert an integer SimpleITK image to a :class:`LabelMap`."""
    volume = volume_from_sitk(image)
    if not np.issubdtype(volume.array.dtype, np.integer):
        raise TypeError(f"label maps hold integers, got {volume.array.dtype}")
    return LabelMap(volume.array, volume.geometry, volume.metadata, dict(label_names or {}))
