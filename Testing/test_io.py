"""dkuxnet.io: exact geometry round trips and one test per bad input, checking the message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkuxnet.errors import InputError, OutputExistsError
from dkuxnet.io import (
    Volume,
    check_same_geometry,
    read_label,
    read_volume,
    strip_volume_suffix,
    write_volume,
)

FORMATS = (".nrrd", ".nii.gz", ".mha")


def _rotation(quaternion: tuple[float, float, float, float], reflect: bool) -> np.ndarray:
    w, x, y, z = np.asarray(quaternion) / np.linalg.norm(quaternion)
    r = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    if reflect:
        r[:, 0] *= -1
    return r


def _volume(shape=(4, 5, 6), spacing=(0.7, 1.1, 2.5), origin=(-10.0, 20.5, 33.3), direction=None):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=shape).astype(np.int16)
    return Volume(array, spacing, origin, np.eye(3) if direction is None else direction)


quaternions = st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(
    lambda q: np.linalg.norm(q) > 0.1
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.tuples(*[st.integers(1, 6) for _ in range(3)]),
    spacing=st.tuples(*[st.floats(0.05, 10.0) for _ in range(3)]),
    origin=st.tuples(*[st.floats(-1000.0, 1000.0) for _ in range(3)]),
    quaternion=quaternions,
    reflect=st.booleans(),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
)
def test_geometry_round_trip_every_format(
    tmp_path, shape, spacing, origin, quaternion, reflect, dtype
):
    direction = _rotation(quaternion, reflect)
    array = np.arange(np.prod(shape)).reshape(shape).astype(dtype) % 200
    volume = Volume(array, spacing, origin, direction)
    for suffix in FORMATS:
        path = write_volume(volume, tmp_path / f"v{suffix}", overwrite=True)
        back = read_volume(path)
        assert back.array.dtype == array.dtype
        np.testing.assert_array_equal(back.array, array)
        assert back.same_geometry(volume), (suffix, volume.geometry_differences(back))
        if suffix != ".nii.gz":  # NIfTI stores geometry as float32; the others in float64
            np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-12)
            np.testing.assert_allclose(back.origin, volume.origin, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(back.direction, volume.direction, atol=1e-12)


def test_axis_order_is_zyx_and_geometry_xyz(tmp_path):
    volume = _volume(shape=(2, 3, 4), spacing=(1.0, 2.0, 3.0))
    image = volume.to_sitk()
    assert image.GetSize() == (4, 3, 2)
    assert volume.size == (4, 3, 2)
    assert volume.spacing_zyx == (3.0, 2.0, 1.0)
    assert image.GetPixel(3, 2, 1) == volume.array[1, 2, 3]
    assert Volume.from_sitk(image).same_geometry(volume)


def test_with_array_keeps_geometry_and_checks_shape():
    volume = _volume()
    other = volume.with_array(np.zeros(volume.array.shape, np.uint8))
    assert other.same_geometry(volume)
    with pytest.raises(ValueError, match="shape"):
        volume.with_array(np.zeros((1, 2, 3)))


def test_mhd_header_and_data_file(tmp_path):
    path = write_volume(_volume(), tmp_path / "v.mhd")
    assert read_volume(path).same_geometry(_volume())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mhd", "v.zraw"]


def test_write_leaves_no_temporary_files(tmp_path):
    write_volume(_volume(), tmp_path / "a.nii.gz")
    write_volume(_volume(), tmp_path / "a.nii.gz", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_write_refuses_to_overwrite(tmp_path):
    path = write_volume(_volume(), tmp_path / "a.nrrd")
    with pytest.raises(OutputExistsError, match="a.nrrd already exists"):
        write_volume(_volume(), path)


def test_write_unknown_format(tmp_path):
    with pytest.raises(InputError, match="unknown image format"):
        write_volume(_volume(), tmp_path / "a.png")


def test_strip_suffix():
    assert strip_volume_suffix("x/case_1.nii.gz") == "case_1"
    assert strip_volume_suffix("case.nrrd") == "case"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"image file not found: .*nothere\.nrrd"):
        read_volume(tmp_path / "nothere.nrrd")


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_text("not an image")
    with pytest.raises(InputError, match=r"cannot read image file .*junk\.nii\.gz"):
        read_volume(path)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([4, 5], sitk.sitkUInt8), str(path))
    with pytest.raises(InputError, match=r"slice\.nrrd is 2D .*3D volume is needed"):
        read_volume(path)


def test_4d_image(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"series\.nii\.gz is 4D"):
        read_volume(path)


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputError, match=r"rgb\.nrrd has 3 components per voxel \(vector/RGB\)"):
        read_volume(path)


def _label(tmp_path: Path, array: np.ndarray, name="lab.nrrd", **geometry) -> Path:
    base = _volume(array.shape, **geometry)
    return write_volume(base.with_array(array), tmp_path / name)


def test_label_ok_is_uint8(tmp_path):
    array = np.zeros((4, 5, 6), np.int16)
    array[1, 2, 3] = 1
    label = read_label(_label(tmp_path, array), reference=_volume())
    assert label.array.dtype == np.uint8
    assert label.array.sum() == 1


def test_label_values_out_of_range(tmp_path):
    array = np.zeros((4, 5, 6), np.uint8)
    array[0, 0, 0] = 255
    with pytest.raises(InputError, match=r"lab\.nrrd has values outside 0\.\.1: found 255"):
        read_label(_label(tmp_path, array))


def test_label_negative_values(tmp_path):
    array = np.zeros((4, 5, 6), np.int16)
    array[0, 0, 0], array[0, 0, 1] = -1, 1
    with pytest.raises(InputError, match=r"outside 0\.\.2: found -1"):
        read_label(_label(tmp_path, array), num_classes=3)


def test_label_non_integer(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[0, 0, 0] = 0.5
    with pytest.raises(InputError, match=r"lab\.nrrd has non-integer values"):
        read_label(_label(tmp_path, array))


def test_label_empty(tmp_path):
    path = _label(tmp_path, np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(InputError, match=r"lab\.nrrd is empty: it has no foreground voxel"):
        read_label(path)
    assert read_label(path, require_foreground=False).array.sum() == 0


def _one(shape=(4, 5, 6)):
    array = np.zeros(shape, np.uint8)
    array[0, 0, 0] = 1
    return array


def test_label_size_mismatch(tmp_path):
    path = _label(tmp_path, _one((4, 5, 7)))
    with pytest.raises(InputError, match=r"lab\.nrrd.*size \(x, y, z\) \(6, 5, 4\) vs \(7, 5, 4\)"):
        read_label(path, reference=_volume())


def test_label_spacing_mismatch(tmp_path):
    path = _label(tmp_path, _one(), spacing=(0.7, 1.1, 3.0))
    with pytest.raises(
        InputError, match=r"lab\.nrrd.*spacing \(0\.7, 1\.1, 2\.5\) vs \(0\.7, 1\.1, 3\) mm"
    ):
        read_label(path, reference=_volume())


def test_label_origin_mismatch(tmp_path):
    path = _label(tmp_path, _one(), origin=(-10.0, 20.5, 34.0))
    with pytest.raises(
        InputError, match=r"lab\.nrrd.*origin \(-10, 20\.5, 33\.3\) vs \(-10, 20\.5, 34\) mm"
    ):
        read_label(path, reference=_volume())


def test_label_direction_mismatch(tmp_path):
    flipped = np.diag([1.0, -1.0, -1.0])
    path = _label(tmp_path, _one(), direction=flipped)
    with pytest.raises(
        InputError, match=r"lab\.nrrd.*direction \(1, 0, 0, 0, 1, 0, 0, 0, 1\) vs \(1, 0, 0, 0, -1"
    ):
        read_label(path, reference=_volume(), reference_name="image img.nrrd")


def test_check_same_geometry_names_both():
    a, b = _volume(), _volume(spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"^img\.nii and seg\.nii do not share .*spacing"):
        check_same_geometry(a, b, names=("img.nii", "seg.nii"))
    check_same_geometry(a, _volume(origin=(-10.0, 20.5, 33.3 + 1e-6)))
