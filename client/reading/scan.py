"""The scan container shared by every stage.

Axis convention, written down once for the whole project
---------------------------------------------------------
* ``array`` is indexed ``[z, y, x]`` (slice, row, column), exactly what
  ``SimpleITK.GetArrayFromImage`` returns.
* ``spacing`` is in millimetres in the SAME order as the array: ``(z, y, x)``.
* ``origin`` and ``direction`` are in ITK's physical frame (LPS, millimetres) and
  ITK's order: ``origin`` is the (x, y, z) position of voxel [0, 0, 0]'s centre;
  ``direction`` is the 3 x 3 ITK direction matrix whose COLUMNS are the physical
  unit vectors of the index axes i (array axis 2), j (axis 1), k (axis 0).
  Round trip: ``img.SetSpacing(spacing[::-1]); img.SetOrigin(origin);
  img.SetDirection(direction.ravel())``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScanVolume:
    """A CT volume in HU with its geometry and identifier-free metadata.

    Attributes
    ----------
    array : numpy.ndarray
        HU values, ``[z, y, x]``; integer HU stays integer.
    spacing : tuple of float
        Voxel size in mm, ``(z, y, x)``.
    origin : tuple of float
        Physical (x, y, z) LPS position of the first voxel, mm.
    direction : numpy.ndarray
        3 x 3 ITK direction matrix (columns = index axes i, j, k).
    metadata : dict
        Safe metadata only (modality, manufacturer, kVp, kernel, ...); never
        patient identifiers.
    source : str
        The path the scan was read from (for messages and the ``source`` column).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)

    def to_sitk(self, array: np.ndarray | None = None):
        """Return a SimpleITK image with this scan's geometry (``array`` replaces the voxels)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array if array is None else array)
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(d) for d in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, metadata: dict[str, Any] | None = None, source: str = "") -> ScanVolume:
        """Build a ScanVolume from a 3D SimpleITK image."""
        from client.reading.headers import itk_array

        return cls(
            array=itk_array(img),
            spacing=tuple(img.GetSpacing())[::-1],
            origin=tuple(img.GetOrigin()),
            direction=np.asarray(img.GetDirection()).reshape(3, 3),
            metadata=dict(metadata or {}),
            source=source,
        )
