"""dkuxnet.metrics against values worked out by hand on a cube and the same cube shifted.

Cube A = voxels x in [3, 6], B = A shifted by one voxel along x (inside a larger grid).
|A| = |B| = 64, |A & B| = 48 -> Dice 0.75, Jaccard 0.6. Surfaces (voxels with a face
neighbour outside) have 56 voxels. From A's surface to B's: the 16 voxels of A's x=3 face are
one x-step from B's x=4 face; the 4 inner voxels of A's x=6 face lie inside B, min(sx, sy, sz)
from B's surface; the other 36 lie on B's surface (distance 0); B -> A is the mirror image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dkuxnet.metrics import case_metrics, format_table, summarize


def _cubes():
    a = np.zeros((10, 10, 12), np.uint8)
    b = np.zeros_like(a)
    a[3:7, 3:7, 3:7] = 1
    b[3:7, 3:7, 4:8] = 1
    return a, b


@pytest.mark.parametrize("style", ["monai", "medpy"])
def test_shifted_cube_voxel_units(style):
    a, b = _cubes()
    m = case_metrics(a, b, None, style=style)
    assert m["dice"] == pytest.approx(0.75)
    assert m["jaccard"] == pytest.approx(0.6)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["asd"] == pytest.approx(20 / 56)


@pytest.mark.parametrize("style", ["monai", "medpy"])
def test_shifted_cube_anisotropic_spacing_in_itk_order(style):
    a, b = _cubes()
    sx, sy, sz = 2.0, 0.5, 1.0  # spacing is given (x, y, z); the shift is along x (last axis)
    m = case_metrics(a, b, (sx, sy, sz), style=style)
    assert m["dice"] == pytest.approx(0.75)
    # 36 zeros, 4 x 0.5 (=min spacing), 16 x 2.0 (=sx): the 95th percentile is sx
    assert m["hd95"] == pytest.approx(sx)
    assert m["asd"] == pytest.approx((16 * sx + 4 * min(sx, sy, sz)) / 56)


def test_styles_differ_on_asymmetric_errors():
    a = np.zeros((12, 12, 12), np.uint8)
    a[3:9, 3:9, 3:9] = 1
    b = a.copy()
    b[5, 5, 10] = 1  # a stray voxel two steps from A: far from A, but A is all on B
    monai, medpy = case_metrics(a, b, None), case_metrics(a, b, None, style="medpy")
    assert monai["dice"] == medpy["dice"]
    assert medpy["asd"] == pytest.approx(0.0)  # medpy's asd is directed: prediction -> label
    assert monai["asd"] > 0.0


def test_identical_masks():
    a, _ = _cubes()
    assert case_metrics(a, a, (1.0, 2.0, 3.0)) == pytest.approx(
        {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    )


def test_empty_prediction():
    _, b = _cubes()
    m = case_metrics(np.zeros_like(b), b, None)
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert math.isinf(m["hd95"]) and math.isinf(m["asd"])


def test_empty_label_with_prediction():
    a, _ = _cubes()
    m = case_metrics(a, np.zeros_like(a), None)
    assert m["dice"] == 0.0 and math.isinf(m["hd95"])


def test_both_empty_is_perfect():
    z = np.zeros((4, 4, 4), np.uint8)
    assert case_metrics(z, z, None) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


def test_label_values_above_one_are_foreground():
    a, b = _cubes()
    assert case_metrics(a * 2, b * 255, None)["dice"] == pytest.approx(0.75)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), None)
    with pytest.raises(ValueError, match="3D"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 2)), None)
    with pytest.raises(ValueError, match="style"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), None, style="x")  # type: ignore[arg-type]


def test_summarize_excludes_infinite_distances():
    rows = [
        {"case": "a", "dice": 0.8, "jaccard": 0.6, "hd95": 2.0, "asd": 1.0},
        {"case": "b", "dice": 0.6, "jaccard": 0.4, "hd95": 4.0, "asd": 3.0},
        {"case": "c", "dice": 0.0, "jaccard": 0.0, "hd95": math.inf, "asd": math.inf},
    ]
    s = summarize(rows)
    assert s["dice"]["mean"] == pytest.approx(1.4 / 3)
    assert s["dice"]["n_excluded"] == 0
    assert s["hd95"] == pytest.approx({"mean": 3.0, "std": 1.0, "n": 2, "n_excluded": 1})
    assert math.isnan(summarize(rows[2:])["asd"]["mean"])


def test_format_table():
    rows = [
        {"case": "one", "dice": 0.9, "jaccard": 0.8, "hd95": 1.5, "asd": 0.5},
        {"case": "two", "dice": 0.0, "jaccard": 0.0, "hd95": math.inf, "asd": math.inf},
    ]
    text = format_table(rows, units="voxels")
    lines = text.splitlines()
    assert "Dice %" in lines[0] and "95HD (voxels)" in lines[0]
    assert lines[2].startswith("one") and "90.00" in lines[2] and "1.50" in lines[2]
    assert "inf" in lines[3]
    assert lines[-1].startswith("mean ± std") and "45.00 ± 45.00" in lines[-1]
    assert "(1 inf)" in lines[-1]
