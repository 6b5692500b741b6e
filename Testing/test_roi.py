"""Region of interest (RAS box -> voxel box, prediction inside it only) and the volume check."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from test_predict_cli import checkpoint, tiny_config  # noqa: F401 - the module fixture
from test_predictor import Constant, Pointwise, oblique_volume
from test_predictor import tiny_config as oracle_config
from tiny import save_random_checkpoint

from dkuxnet.checkpoint import export_model, load_checkpoint
from dkuxnet.cli import main
from dkuxnet.errors import InputError
from dkuxnet.events import read_events
from dkuxnet.inference import Predictor
from dkuxnet.inference.roi import (
    box_from_corners,
    box_from_ras,
    parse_ras_box,
    parse_roi,
    volume_check,
    volume_ml,
    volume_warning,
)
from dkuxnet.io import Volume, read_volume, write_volume


def _lps_to_ras(point: np.ndarray) -> np.ndarray:
    return point * np.array([-1.0, -1.0, 1.0])


def _centre_ras(volume: Volume, kji: tuple[int, int, int]) -> np.ndarray:
    return _lps_to_ras(volume.index_to_physical(kji[::-1]))


def _inside(volume: Volume, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Mask of the voxels whose centre lies in the RAS box [low, high]."""
    k, j, i = np.indices(volume.array.shape)
    ras = _lps_to_ras(volume.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)))
    inside = np.all((ras >= low) & (ras <= high), axis=1)
    return inside.reshape(volume.array.shape)


def test_box_of_an_axis_aligned_image_rounds_outward_to_whole_voxels() -> None:
    # LPS identity direction: i runs towards L (RAS -x), j towards P (RAS -y)
    volume = Volume(
        np.zeros((10, 20, 30), np.float32), (1.0, 2.0, 3.0), (5.0, -4.0, 10.0), np.eye(3)
    )
    centre = _centre_ras(volume, (4, 6, 8))  # k=4, j=6, i=8
    # a box around one voxel centre, smaller than the voxel: that voxel only
    box = box_from_ras(volume, centre - 0.2, centre + 0.2)
    assert box == (slice(4, 5), slice(6, 7), slice(8, 9))
    # corners given in any order, reaching 0.6 voxel past neighbouring centres: rounded outward
    spacing = np.array([1.0, 2.0, 3.0])
    a, b = centre + 1.6 * spacing, centre - 1.6 * spacing
    assert box_from_ras(volume, a, b) == (slice(2, 7), slice(4, 9), slice(6, 11))
    # a box larger than the image on every side: the whole image, i.e. nothing to crop
    assert box_from_ras(volume, (-1e4, -1e4, -1e4), (1e4, 1e4, 1e4)) is None
    # partly outside: clipped to the image
    low = box_from_ras(volume, centre, (-1e4, -1e4, -1e4))
    assert low is not None and (low[0].start, low[1].stop, low[2].stop) == (0, 20, 30)


def test_box_of_an_oblique_image_covers_every_voxel_centre_in_the_ras_box() -> None:
    volume, _ = oblique_volume()
    lo, hi = _centre_ras(volume, (6, 9, 12)), _centre_ras(volume, (13, 19, 25))
    low, high = np.minimum(lo, hi), np.maximum(lo, hi)
    box = box_from_ras(volume, low, high)
    assert box is not None
    inside = _inside(volume, low, high)
    assert inside.sum() > 100
    in_box = np.zeros_like(inside)
    in_box[box] = True
    assert np.all(in_box[inside])  # no voxel of the RAS box is left out
    # and the voxel box is that of the covered voxels, at most one voxel wider per side
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        assert hits[0] - 1 <= box[axis].start <= hits[0]
        assert hits[-1] + 1 <= box[axis].stop <= hits[-1] + 2


def test_bad_boxes_are_refused_with_what_is_wrong() -> None:
    volume = Volume(np.zeros((10, 10, 10), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(InputError, match="does not overlap the image"):
        box_from_ras(volume, (100, 100, 100), (120, 130, 140))
    with pytest.raises(InputError, match="no extent"):
        box_from_ras(volume, (-2, -2, 1), (-5, -5, 1))
    for text in ("1,2,3,4,5", "a,b,c,d,e,f", "1,2,3,4,5,nan", ""):
        with pytest.raises(InputError, match="six numbers"):
            parse_ras_box(text)
    with pytest.raises(InputError, match="'1,2,3,4,2,6': the box has no extent"):
        parse_ras_box("1,2,3,4,2,6")
    assert parse_ras_box("-1.5, 2,3 4,5,6") == ((-1.5, 2.0, 3.0), (4.0, 5.0, 6.0))


def test_prediction_inside_the_roi_only_on_the_full_grid() -> None:
    """Inside the box: exactly the prediction of the box's sub-volume; outside: 0."""
    volume, _ = oblique_volume()
    predictor = Predictor([Constant(0.9)], oracle_config(), "cpu", largest_component=False)
    box = (slice(3, 15), slice(2, 20), slice(5, 27))
    result = Predictor(
        [Constant(0.9)], oracle_config(), "cpu", largest_component=False, uncertainty=None
    ).predict_volume(volume, roi=box, probabilities=True)
    assert result.label.same_geometry(volume)
    expected = np.zeros(volume.array.shape, np.uint8)
    expected[box] = 1
    np.testing.assert_array_equal(result.label.array, expected)
    assert result.probabilities is not None
    assert np.all(result.probabilities.array[expected == 0] == 0)
    np.testing.assert_allclose(result.probabilities.array[box], 0.9, atol=1e-5)
    # an image-dependent network: the box's values equal a prediction of the cropped volume
    pointwise = Predictor([Pointwise(threshold=0.3)], oracle_config(), "cpu")
    full = pointwise.predict_volume(volume, roi=box)
    from dkuxnet.preprocessing import crop_volume

    alone = pointwise.predict_volume(crop_volume(volume, box))
    np.testing.assert_array_equal(full.label.array[box], alone.label.array)
    assert predictor.label_volume_ml is None  # built from networks: no training range known


def test_volume_warning_names_the_problem_and_the_fix() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    volume = Volume(label, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))  # 8 mm^3 per voxel
    empty = volume_warning(volume, (50.0, 150.0))
    assert empty is not None and "empty" in empty
    label[:5, :5, :5] = 1  # 125 voxels = 1 ml
    assert volume_ml(label, (2.0, 2.0, 2.0)) == pytest.approx(1.0)
    assert volume_warning(volume, None) is None  # no range known: only emptiness is reported
    assert volume_warning(volume, (0.5, 1.5)) is None
    small = volume_warning(volume, (5.0, 10.0))
    assert small is not None and "1.0 ml" in small and "smallest" in small
    large = volume_warning(volume, (0.1, 0.4), "scan 3's segmentation")
    assert large is not None and large.startswith("scan 3's segmentation is 1 ml")
    assert "region of interest" in large


def test_volume_check_names_what_the_warning_says_for_a_front_end() -> None:
    """The ``check`` of predict's warning event: the panel offers a box on ``too_large``."""
    label = np.zeros((10, 10, 10), np.uint8)
    volume = Volume(label, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    assert volume_check(volume, None) == "empty" == volume_check(volume, (50.0, 150.0))
    label[:5, :5, :5] = 1  # 1 ml
    assert volume_check(volume, None) is None
    assert volume_check(volume, (0.1, 0.5)) is None  # exactly twice the largest: still plausible
    assert volume_check(volume, (0.1, 0.499)) == "too_large"
    assert volume_check(volume, (4.0, 9.0)) is None  # exactly a quarter of the smallest
    assert volume_check(volume, (4.01, 9.0)) == "too_small"
    for expected in (None, (0.1, 0.499), (4.01, 9.0), (0.5, 1.5)):
        assert (volume_check(volume, expected) is None) == (
            volume_warning(volume, expected) is None
        )


def test_trainer_range_reaches_the_exported_model(tmp_path: Path) -> None:
    record = {"config": oracle_config().to_dict(), "networks": [{}], "label_volume_ml": [3.0, 9.5]}
    path = export_model(record, tmp_path / "model.pt")
    assert load_checkpoint(path)["label_volume_ml"] == [3.0, 9.5]


def test_predict_cli_roi_and_warning_events(tmp_path: Path) -> None:
    config = tiny_config()
    model = save_random_checkpoint(tmp_path / "model.pt", config)
    record = load_checkpoint(model)
    record["label_volume_ml"] = [1e-6, 2e-6]  # any segmentation is far larger than this
    model = export_model(record, tmp_path / "ranged.pt")
    shape = (12, 14, 20)
    array = np.random.default_rng(0).normal(100, 20, shape).astype(np.int16)
    image = Volume(array, (1.0, 1.0, 1.0), (10.0, 20.0, 30.0), np.diag([1.0, -1.0, 1.0]))
    write_volume(image, tmp_path / "in.nrrd")
    lo, hi = _centre_ras(image, (2, 3, 4)), _centre_ras(image, (9, 10, 15))
    roi = ",".join(f"{v:.3f}" for v in (*lo, *hi))
    events = tmp_path / "events.jsonl"
    out = tmp_path / "pred.nrrd"
    argv = ["predict", "--model", str(model), "--input", str(tmp_path / "in.nrrd")]
    argv += ["--output", str(out), "--device", "cpu", "--events", str(events), f"--roi={roi}"]
    assert main(argv + ["--no-largest-component", "--probabilities"]) == 0
    pred = read_volume(out)
    assert pred.same_geometry(image)
    prob = read_volume(tmp_path / "pred_prob.nrrd").array
    outside = np.ones(shape, bool)
    outside[2:10, 3:11, 4:16] = False
    assert np.all(pred.array[outside] == 0) and np.all(prob[outside] == 0)
    assert np.all(prob[~outside] > 0)  # the box itself was predicted
    recorded = read_events(events)
    warnings = [e for e in recorded if e["event"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["case"] == "in"
    assert ("empty" in warnings[0]["message"]) == (pred.array.sum() == 0)
    assert warnings[0]["check"] == ("empty" if pred.array.sum() == 0 else "too_large")
    assert recorded[-1]["status"] == "completed"
    # a box beside the image: refused before any output is written, the reason recorded
    far = ",".join(str(v) for v in (500, 500, 500, 600, 600, 600))
    bad = [a if not a.startswith("--roi=") else f"--roi={far}" for a in argv]
    assert main([*bad[:6], str(tmp_path / "pred2.nrrd"), *bad[7:]]) == 1
    assert not (tmp_path / "pred2.nrrd").exists()
    assert "does not overlap" in read_events(events)[-1]["error"]


@pytest.mark.parametrize("flip", list(itertools.product((1.0, -1.0), repeat=2)))
def test_roi_box_matches_voxel_centres_for_flipped_axes(flip: tuple[float, float]) -> None:
    direction = np.diag([flip[0], flip[1], 1.0])
    volume = Volume(np.zeros((8, 9, 10), np.float32), (1.5, 1.0, 2.0), (3.0, 4.0, 5.0), direction)
    lo, hi = _centre_ras(volume, (1, 2, 3)), _centre_ras(volume, (5, 6, 7))
    assert box_from_ras(volume, lo, hi) == (slice(1, 6), slice(2, 7), slice(3, 8))


# ------------------------------------------------------------------ a rotated box (eight corners)
def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _rotated_scan() -> Volume:
    """A scan rotated 45 degrees in-plane (and tilted), anisotropic."""
    direction = _rotation(2, 45.0) @ _rotation(0, 10.0)  # LPS; columns are the i, j, k axes
    return Volume(
        np.zeros((24, 96, 96), np.float32), (0.8, 0.9, 2.0), (-5.0, 12.0, 30.0), direction
    )


def _roi(centre_ras: np.ndarray, axes_ras: np.ndarray, half: np.ndarray) -> np.ndarray:
    """The eight corners ``(8, 3)`` of a box: centre, its axes (columns), half sizes (mm)."""
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    return centre_ras + (signs * half) @ axes_ras.T


def _voxel_centres_in(volume: Volume, centre, axes, half) -> np.ndarray:
    """Brute force: the mask of the voxels whose centre lies in the (rotated) box."""
    k, j, i = np.indices(volume.array.shape)
    ras = _lps_to_ras(volume.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)))
    local = (ras - centre) @ axes  # coordinates along the box's own axes
    return np.all(np.abs(local) <= half, axis=1).reshape(volume.array.shape)


@pytest.mark.parametrize("tilt", [0.0, 25.0], ids=["roi-along-the-scan", "roi-rotated-otherwise"])
def test_a_rotated_roi_on_a_rotated_scan_is_cropped_tightly(tilt: float) -> None:
    """Its eight corners give the voxel box of the voxels it holds, not of its RAS hull."""
    volume = _rotated_scan()
    scan_axes_ras = np.diag([-1.0, -1.0, 1.0]) @ volume.direction  # unit columns, RAS
    axes = scan_axes_ras @ _rotation(1, tilt)
    centre = _centre_ras(volume, (12, 48, 47)) + np.array([0.3, -0.2, 0.1])
    half = np.array([9.0, 7.0, 12.0])
    corners = _roi(centre, axes, half)
    inside = _voxel_centres_in(volume, centre, axes, half)
    assert inside.sum() > 500

    box = box_from_corners(volume, corners)
    assert box is not None
    in_box = np.zeros_like(inside)
    in_box[box] = True
    assert np.all(in_box[inside])  # every voxel the box holds is segmented
    widths = np.array([s.stop - s.start for s in box])
    hull = []
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        hull.append(hits[-1] - hits[0] + 1)
        if tilt == 0.0:  # the box along the scan's axes: its own voxels, <= 1 voxel per side
            assert hits[0] - 1 <= box[axis].start and box[axis].stop <= hits[-1] + 2
    # the RAS-aligned hull of the same box (what the panel passed before) is never narrower,
    # and for a box along the rotated scan far wider in-plane
    old = box_from_ras(volume, corners.min(axis=0), corners.max(axis=0))
    assert old is not None
    old_widths = np.array([s.stop - s.start for s in old])
    assert np.all(old_widths >= widths)
    if tilt == 0.0:
        assert np.all(old_widths[1:] >= 1.3 * widths[1:]), (old_widths, widths)
    else:  # no wider than the box's extent in index space, rounded out by a voxel per side
        lps = corners * np.array([-1.0, -1.0, 1.0]) - np.asarray(volume.origin)
        ijk = np.linalg.solve(volume.direction * np.asarray(volume.spacing), lps.T).T
        extent = (ijk.max(axis=0) - ijk.min(axis=0))[::-1]  # (k, j, i)
        assert np.all(widths <= np.ceil(extent) + 2), (widths, extent)
        assert np.all(widths >= np.array(hull))


def test_roi_text_is_two_corners_or_eight() -> None:
    corners = parse_roi("-1,2,3,4,5,6")
    assert corners.shape == (8, 3)
    assert {tuple(c) for c in corners} == set(
        itertools.product((-1.0, 4.0), (2.0, 5.0), (3.0, 6.0))
    )
    rotated = _roi(np.array([1.0, 2.0, 3.0]), _rotation(2, 30.0), np.array([4.0, 5.0, 6.0]))
    np.testing.assert_allclose(
        parse_roi(",".join(f"{v:.6f}" for v in rotated.flat)), rotated, atol=1e-6
    )
    with pytest.raises(InputError, match="six numbers .* or 24"):
        parse_roi("1,2,3,4,5,6,7")
    flat = rotated.copy()
    flat[:, 2] = 3.0  # all corners in one plane
    with pytest.raises(InputError, match="lie in a plane"):
        parse_roi(",".join(str(v) for v in flat.flat))
    with pytest.raises(InputError, match="six numbers"):
        parse_roi("1,2,3,4,5,nan")
