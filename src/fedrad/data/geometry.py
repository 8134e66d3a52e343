"""Image geometry: where an array's pixels lie in the patient, in millimetres.

A `Geometry` gives, for each spatial axis of a channel-first array, its pixel spacing in mm and its
direction: the unit vector, in RAS+ world coordinates (x toward the patient's right, y anterior,
z superior: NIfTI's space and MONAI's default), along which the axis index grows. Its `affine()`
is what harmonisation hands MONAI's `Orientation` and `Spacing` (fedrad.data.harmonize).

Where a source gives no direction (a PNG, a radiograph without ImageOrientationPatient, a MedMNIST
array), the array is taken to be in the display layout the readers produce: 2D rows run anterior
to posterior and columns from the patient's right to left (MONAI axis codes "PL"); 3D adds a first
axis running inferior to superior ("SPL"). 2D world coordinates are (x, y): a 2D image keeps its
direction only when it is an axial plane; a coronal or sagittal plane gets the display layout.

Example:
    >>> Geometry((0.5, 0.7)).affine()[:2, :2].tolist()
    [[0.0, -0.7], [-0.5, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # MONAI: (start, end) labels of world x, y, z
_DISPLAY = {
    2: ((0.0, -1.0), (-1.0, 0.0)),  # rows toward posterior, columns toward the patient's left
    3: ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)),  # slices toward superior, then as 2D
}


@dataclass(frozen=True)
class Geometry:
    """Pixel spacing (mm) and RAS direction of each spatial axis of one image."""

    spacing: tuple[float, ...]
    axes: tuple[tuple[float, ...], ...] | None = None  # axes[j]: unit vector of array axis j; None: display

    def __post_init__(self) -> None:
        if len(self.spacing) not in _DISPLAY or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 2 or 3 positive numbers (mm), got {list(self.spacing)}")
        if self.axes is not None and np.asarray(self.axes).shape != (self.dims, self.dims):
            raise ValueError(f"axes must be {self.dims} vectors of {self.dims} numbers, got {self.axes}")

    @property
    def dims(self) -> int:
        return len(self.spacing)

    def directions(self) -> np.ndarray:
        """(dims, dims), column j the world direction of array axis j."""
        return np.asarray(self.axes if self.axes is not None else _DISPLAY[self.dims], dtype=np.float64).T

    def affine(self) -> np.ndarray:
        """The 4 x 4 RAS affine MONAI reads (origin at the first pixel; only spacing and direction matter)."""
        affine = np.eye(4)
        affine[: self.dims, : self.dims] = self.directions() * np.asarray(self.spacing, dtype=np.float64)
        return affine

    def plane(self) -> Geometry:
        """The geometry of each 2D plane (the last two axes) of a 3D image."""
        if self.dims != 3:
            raise ValueError(f"plane() needs a 3D geometry, got {self.dims}D")
        rows, columns = self.directions()[:, 1], self.directions()[:, 2]
        return Geometry(self.spacing[1:], axial_axes(rows, columns))

    @classmethod
    def from_vectors(cls, vectors: Sequence[Sequence[float]]) -> Geometry:
        """From each array axis's step in world mm (an affine's columns): spacing = its length."""
        steps = np.asarray(vectors, dtype=np.float64)
        spacing = np.linalg.norm(steps, axis=1)
        if np.any(spacing <= 0) or abs(np.linalg.det(steps)) < 1e-9 * float(np.prod(spacing)):
            raise ValueError("degenerate geometry: axes of zero length or in one plane")
        units = steps / spacing[:, None]
        return cls(tuple(float(s) for s in spacing), tuple(tuple(float(x) for x in u) for u in units))


def lps_to_ras(vector: Sequence[float]) -> np.ndarray:
    """A DICOM (LPS) direction in RAS: x and y change sign."""
    return np.asarray(vector, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


def axial_axes(rows: np.ndarray, columns: np.ndarray) -> tuple[tuple[float, ...], ...] | None:
    """2D (x, y) directions of a plane's row and column axes (3D RAS unit vectors); None unless axial."""
    normal = np.cross(rows, columns)
    if not np.any(normal) or int(np.argmax(np.abs(normal))) != 2:
        return None  # coronal, sagittal or degenerate: not a plane of world x and y
    in_plane = [np.asarray(v[:2], dtype=np.float64) for v in (rows, columns)]
    return tuple(tuple(float(x) for x in v / np.linalg.norm(v)) for v in in_plane)
