from __future__ import annotations

import numpy as np
import pytest

from fedrad.data.geometry import Geometry, axial_axes, lps_to_ras


def test_display_layout_affine_scales_each_axis_by_its_own_spacing():
    # Rows (axis 0) run toward posterior (-y), columns toward the patient's left (-x), in RAS.
    affine = Geometry((0.5, 0.8)).affine()

    np.testing.assert_allclose(affine[:2, :2], [[0.0, -0.8], [-0.5, 0.0]])
    np.testing.assert_allclose(Geometry((2.0, 1.0, 1.0)).affine()[:3, 0], [0.0, 0.0, 2.0])  # slices: superior


def test_from_vectors_takes_spacing_from_lengths_and_refuses_degenerate_axes():
    geometry = Geometry.from_vectors([[0.0, 0.0, 3.0], [0.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])

    assert geometry.spacing == (3.0, 2.0, 1.0)
    np.testing.assert_allclose(geometry.directions(), Geometry((3.0, 2.0, 1.0)).directions())  # the display layout
    with pytest.raises(ValueError, match="degenerate"):
        Geometry.from_vectors([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="spacing"):
        Geometry((0.0, 1.0))


def test_lps_directions_and_axial_planes():
    np.testing.assert_allclose(lps_to_ras([1.0, 0.0, 0.0]), [-1.0, 0.0, 0.0])  # LPS +x is the patient's left
    rows, columns = np.array([0.0, -1.0, 0.0]), np.array([-1.0, 0.0, 0.0])

    assert axial_axes(rows, columns) == ((0.0, -1.0), (-1.0, 0.0))  # the display layout
    assert axial_axes(np.array([0.0, 0.0, -1.0]), columns) is None  # coronal: not a plane of x and y
    plane = Geometry.from_vectors([[0, 0, 3.0], [0, -0.5, 0], [-0.7, 0, 0]]).plane()
    assert plane.spacing == (0.5, 0.7) and plane.axes == ((0.0, -1.0), (-1.0, 0.0))
