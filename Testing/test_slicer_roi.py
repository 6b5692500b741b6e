"""A region of interest for Segment (DKUXNetSegmentLib) on slicer-core, with real MRML.

The bundled model learned the left atrium on scans cropped around the heart; on a scan that shows
the whole chest the user places a markups ROI box around the heart. The panel hands the box to
``dkuxnet predict --roi`` as its eight corners in the volume's own frame (the frame of the
exported ``input.nrrd``): the ROI may be rotated, and the ROI and the volume may be under linear
transforms; the child crops the tightest voxel box around the corners. ``warning`` events of the child (an implausible result) reach the
task for the panel to show.

The oracle for the bounds is MRML itself: ``IsPointInROIWorld`` and ``GetRASBounds`` of the ROI
and the volume's IJK->RAS matrix and parent transform, not the code under test. (On slicer-core
5.13 ``IsPointInROI``, the node-frame variant, answers True for every point; the tests use the
world one.)

The real children run with one OpenMP thread: on a 2-core machine that is busy, more threads
than free cores spin against each other.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from test_slicer_uncertainty import ijk_to_ras

from dkuxnet.commands import predict as predict_command
from dkuxnet.errors import InputError
from dkuxnet.inference.roi import box_from_corners, parse_roi
from dkuxnet.io import read_volume
from dkuxnet.jobs import JOB_FILE, JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")

TIMEOUT = 300
# The warning `dkuxnet predict` gives when the atrium it found is implausibly large.
TOO_LARGE = (
    "the left atrium found is 1480 ml, more than twice the largest in the model's training data "
    "(160 ml): the scan probably shows more than the heart; place a region of interest around "
    "the heart and segment again"
)
# A stand-in for `dkuxnet predict`: thresholds the image, warns twice (before its output event,
# as the real one may) and accepts --roi without using it.
STAND_IN = f"""
import argparse
from dkuxnet.events import EventWriter
from dkuxnet.io import read_volume, write_volume

parser = argparse.ArgumentParser()
parser.add_argument("command")
for option in ("--model", "--input", "--output", "--device", "--events", "--roi"):
    parser.add_argument(option)
args = parser.parse_args()
events = EventWriter(args.events)
events.emit("started", job="predict", total=1, device="cpu", resumed_from=0, uncertainty=None)
image = read_volume(args.input)
events.emit("warning", case="input", message={TOO_LARGE!r})
events.emit("warning", case="input", message="second warning")
write_volume(image.with_array((image.array > image.array.mean()).astype("uint8")), args.output)
events.emit("output", path=args.output, case="input")
events.emit("finished", status="completed", error=None)
"""


# A box around part of add_volume()'s volume under a 90 degree turn: centre shifted from the
# volume's centre, faces at least 0.075 mm from every voxel centre and voxel boundary (a face on
# a voxel centre would make "inside" depend on float rounding).
SHIFT, SIZE = (1.1, -0.3, 0.3), (9.25, 13.15, 10.3)


# ------------------------------------------------------------------ scene helpers
def matrix(rotation=None, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A 4x4 homogeneous matrix; no ``rotation``: identity."""
    m = np.eye(4)
    m[:3, :3] = np.eye(3) if rotation is None else rotation
    m[:3, 3] = translation
    return m


def rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about the R (0), A (1) or S (2) axis."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def add_roi(scene, center, size, orientation=None, name="Heart box"):
    """A markups ROI box: ``center`` and ``size`` (mm) in its node frame, rotated by
    ``orientation`` (as dragging its rotation handles does)."""
    import slicer

    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(matrix(orientation)))
    roi.SetCenter(*center)
    roi.SetSize(*size)
    return roi


def add_transform(scene, to_parent: np.ndarray, name="registration"):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    return node


def add_volume(scene, name="Chest", shape=(12, 24, 20), seed=0, ijk_to_ras=None):
    """A volume with a bright blob; axis-aligned by default (R flipped, as most DICOM is)."""
    import slicer

    rng = np.random.default_rng(seed)
    array = rng.normal(100.0, 20.0, shape).astype(np.float32)
    array[3:9, 6:18, 5:15] += 120.0
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    if ijk_to_ras is None:
        ijk_to_ras = matrix(np.diag([-1.2, 0.9, 2.0]), (30.0, -10.0, 4.0))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def to_world(node) -> np.ndarray:
    """The node's own frame -> world (identity without a parent transform)."""
    import slicer
    import vtk

    m = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        node.GetParentTransformNode(), None, m
    )
    return slicer.util.arrayFromVTKMatrix(m)


def voxel_centres(node) -> tuple[np.ndarray, np.ndarray]:
    """Every voxel centre of ``node`` as (local RAS, world RAS), each (N, 3), in array order."""
    import slicer

    shape = slicer.util.arrayFromVolume(node).shape  # (k, j, i)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    local = ijk_to_ras(node) @ ijk
    return local[:3].T, (to_world(node) @ local)[:3].T


def in_box(points: np.ndarray, bounds, margin=0.0) -> np.ndarray:
    low, high = np.asarray(bounds[:3]), np.asarray(bounds[3:])
    return np.all((points >= low - margin) & (points <= high + margin), axis=1)


def ras_bounds(roi) -> tuple[float, ...]:
    """MRML's own world bounds of the ROI, in the order of ``--roi`` (R1, A1, S1, R2, A2, S2)."""
    b = [0.0] * 6
    roi.GetRASBounds(b)
    return (b[0], b[2], b[4], b[1], b[3], b[5])


def stand_in_factory(tmp_path: Path):
    script = tmp_path / "stand_in_predict.py"
    script.write_text(STAND_IN)
    return lambda args: [sys.executable, str(script), *args]


@pytest.fixture()
def one_thread(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------ the parameter node
def test_the_roi_is_optional_and_kept_in_the_parameter_node(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = logic_module.Parameters(node)
    assert params.roi is None  # the whole volume
    roi = add_roi(scene, (0, 0, 0), (50, 50, 50))
    params.roi = roi
    assert logic_module.Parameters(node).roi is roi
    params.roi = None
    assert logic_module.Parameters(node).roi is None
    params.roi = roi
    scene.RemoveNode(roi)  # MRML drops the reference: back to the whole volume
    assert logic_module.Parameters(node).roi is None


# ------------------------------------------------------------------ the bounds
def test_an_roi_on_an_untransformed_volume_is_its_own_box(scene) -> None:
    volume = add_volume(scene)
    roi = add_roi(scene, center=(1.0, 2.0, 3.0), size=(10.0, 20.0, 30.0))
    bounds = bridge.roi_bounds_in_volume_frame(roi, volume)
    assert bounds == pytest.approx((-4.0, -8.0, -12.0, 6.0, 12.0, 18.0))
    assert bounds == pytest.approx(ras_bounds(roi))
    assert roi.IsPointInROIWorld([5.9, 11.9, 17.9]) and not roi.IsPointInROIWorld([6.1, 0, 0])


def test_a_rotated_roi_gives_the_axis_aligned_box_around_its_corners(scene) -> None:
    volume = add_volume(scene)
    orientation = rotation(2, 0.5) @ rotation(0, 0.3)
    center, size = np.array([5.0, -3.0, 8.0]), np.array([40.0, 20.0, 30.0])
    roi = add_roi(scene, center, size, orientation)
    bounds = bridge.roi_bounds_in_volume_frame(roi, volume)

    half_extent = np.abs(orientation) @ (size / 2)  # of a rotated box, per RAS axis
    assert bounds == pytest.approx((*(center - half_extent), *(center + half_extent)))
    assert bounds == pytest.approx(ras_bounds(roi))
    # every point MRML finds inside the rotated box is inside the bounds
    rng = np.random.default_rng(0)
    points = center + rng.uniform(-30, 30, (2000, 3))
    inside = np.array([roi.IsPointInROIWorld(list(p)) for p in points])
    assert 100 < inside.sum() < len(points)  # the sample straddles the box
    assert in_box(points[inside], bounds).all()


def test_a_volume_under_a_transform_gets_the_box_in_its_own_frame(scene) -> None:
    """The ROI is placed in world coordinates, where the views show the transformed volume;
    the child sees the volume's own frame. A 90 degree turn keeps the box exact: a voxel is in
    the bounds exactly when MRML finds its (world) centre in the ROI."""
    volume = add_volume(scene)
    to_parent = matrix(rotation(2, math.pi / 2), (5.0, 2.0, -3.0))
    volume.SetAndObserveTransformNodeID(add_transform(scene, to_parent).GetID())
    local, world = voxel_centres(volume)
    world_center = world.mean(axis=0) + SHIFT
    roi = add_roi(scene, world_center, size=SIZE)

    bounds = bridge.roi_bounds_in_volume_frame(roi, volume)

    # the ROI's centre, a point known to be inside, maps to the centre of the box
    center_local = (np.linalg.inv(to_parent) @ [*world_center, 1.0])[:3]
    box = np.asarray(bounds)
    assert (box[:3] + box[3:]) / 2 == pytest.approx(center_local)
    assert box[3:] - box[:3] == pytest.approx(
        np.take(SIZE, (1, 0, 2))
    )  # R and A swap under the turn
    assert bounds != pytest.approx(ras_bounds(roi))  # the world box would be wrong here
    in_roi = np.array([roi.IsPointInROIWorld(list(p)) for p in world])
    assert 0 < in_roi.sum() < len(world)
    np.testing.assert_array_equal(in_box(local, bounds), in_roi)


def test_an_roi_and_a_volume_under_transforms_of_their_own(scene) -> None:
    """Any rotation: the box holds every voxel whose world centre is in the ROI."""
    volume = add_volume(scene)
    volume.SetAndObserveTransformNodeID(
        add_transform(scene, matrix(rotation(0, 0.4), (2.0, -1.0, 6.0)), "volume's").GetID()
    )
    roi_to_parent = matrix(rotation(1, -0.3), (-4.0, 3.0, 1.0))
    _, world = voxel_centres(volume)
    roi_center = (np.linalg.inv(roi_to_parent) @ [*world.mean(axis=0), 1.0])[:3]
    roi = add_roi(scene, roi_center, (12.0, 10.0, 14.0), rotation(2, 0.7))
    roi.SetAndObserveTransformNodeID(add_transform(scene, roi_to_parent, "ROI's").GetID())

    bounds = bridge.roi_bounds_in_volume_frame(roi, volume)

    local, world = voxel_centres(volume)
    in_roi = np.array([roi.IsPointInROIWorld(list(p)) for p in world])
    assert 0 < in_roi.sum() < len(world)
    assert in_box(local[in_roi], bounds).all()
    # the same ROI under the volume's own transform is read in that frame unchanged
    roi.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    expected = [0.0] * 6
    roi.GetBounds(expected)  # in the ROI's node frame = the volume's frame now
    assert bridge.roi_bounds_in_volume_frame(roi, volume) == pytest.approx(
        (expected[0], expected[2], expected[4], expected[1], expected[3], expected[5])
    )


@pytest.mark.parametrize("warped", ["roi", "volume"])
def test_a_non_linear_transform_is_refused_with_what_to_do(scene, warped: str) -> None:
    volume = add_volume(scene, name="Chest")
    roi = add_roi(scene, (0, 0, 0), (50, 50, 50), name="Heart box")
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Breathing warp")
    (roi if warped == "roi" else volume).SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="non-linear transform 'Breathing warp'") as raised:
        bridge.roi_bounds_in_volume_frame(roi, volume)
    assert ("'Heart box'" if warped == "roi" else "'Chest' is under") in str(raised.value)
    assert "Harden" in str(raised.value)


def test_an_roi_not_yet_placed_is_refused(scene) -> None:
    volume = add_volume(scene)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Empty box")  # size (0, 0, 0)
    with pytest.raises(InputError, match="'Empty box' has no size yet"):
        bridge.roi_bounds_in_volume_frame(roi, volume)


def test_a_rotated_roi_on_a_rotated_volume_is_cropped_to_what_it_holds(scene) -> None:
    """A scan turned 45 degrees in-plane and a box turned with it: the child's voxel box holds
    every voxel whose centre MRML finds in the ROI and is at most one voxel wider per side (the
    axis-aligned bounds made it about 1.4 times as wide in-plane, up to 4 times the area)."""
    turn = rotation(2, math.radians(45.0)) @ rotation(0, math.radians(8.0))
    ijk = matrix(turn @ np.diag([0.9, 0.9, 2.0]), (12.0, -30.0, 5.0))
    volume = add_volume(scene, shape=(14, 40, 40), ijk_to_ras=ijk)
    centre = (ijk @ np.array([19.6, 20.3, 6.7, 1.0]))[:3]
    roi = add_roi(scene, centre, (13.3, 9.1, 8.7), orientation=turn)
    _, world = voxel_centres(volume)
    inside = np.array([roi.IsPointInROIWorld(p.tolist()) for p in world])
    inside = inside.reshape(14, 40, 40)
    assert inside.sum() > 100

    grid = bridge.volume_from_node(volume)
    box = box_from_corners(grid, bridge.roi_corners_in_volume_frame(roi, volume))
    assert box is not None
    in_box = np.zeros_like(inside)
    in_box[box] = True
    assert np.all(in_box[inside])
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        assert hits[0] - 1 <= box[axis].start and box[axis].stop <= hits[-1] + 2
    old = box_from_corners(  # the axis-aligned bounds' box, as the panel passed it before
        grid, np.array(list(itertools.product(*np.reshape(ras_bounds(roi), (2, 3)).T)))
    )
    assert old is not None
    assert (old[1].stop - old[1].start) * (old[2].stop - old[2].start) >= 1.8 * (
        (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    )


# ------------------------------------------------------------------ the command line
def test_the_command_line_has_roi_only_when_one_is_chosen(scene, tmp_path: Path) -> None:
    volume = add_volume(scene)
    roi = add_roi(scene, (-31.25, 2.0, 3.0), (10.0, 20.0, 30.0))  # negative low corner
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=stand_in_factory(tmp_path)
    )
    without = logic.start_segment(volume, "model.pt")
    assert not any(a.startswith("--roi") for a in without.job.command)
    assert "roi" not in json.loads((without.job.folder / JOB_FILE).read_text())
    assert without.wait(60) is JobState.COMPLETED, without.error

    task = logic.start_segment(volume, "model.pt", roi_node=roi, keep_folder=True)
    roi_args = [a for a in task.job.command if a.startswith("--roi=")]
    assert len(roi_args) == 1  # the eight corners, R,A,S each
    corners = np.reshape([float(v) for v in roi_args[0][len("--roi=") :].split(",")], (8, 3))
    expected = set(itertools.product((-36.25, -26.25), (-8.0, 12.0), (-12.0, 18.0)))
    assert {tuple(c) for c in corners.round(4).tolist()} == expected
    # `dkuxnet predict` reads it back (as one "--roi=..." argument: as two, argparse would take
    # "-36.2500,..." for an option)
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    args = task.job.command
    parsed = parser.parse_args(args[args.index("predict") + 1 :])
    np.testing.assert_allclose(
        parse_roi(parsed.roi), bridge.roi_corners_in_volume_frame(roi, volume), atol=1e-4
    )
    recorded = json.loads((task.job.folder / JOB_FILE).read_text())["roi"]
    assert recorded["node"] == "Heart box"
    assert recorded["bounds_ras"] == pytest.approx([-36.25, -8.0, -12.0, -26.25, 12.0, 18.0])
    assert task.wait(60) is JobState.COMPLETED, task.error


def test_an_unusable_roi_starts_nothing(scene, tmp_path: Path) -> None:
    volume = add_volume(scene)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Empty box")
    started: list[list[str]] = []
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=lambda a: started.append(a) or []
    )
    with pytest.raises(InputError, match="no size"):
        logic.start_segment(volume, "model.pt", roi_node=roi)
    assert started == [] and not (tmp_path / "jobs").exists()  # nothing exported or started


# ------------------------------------------------------------------ warnings
def test_warning_events_reach_the_task_and_its_status(scene, tmp_path: Path) -> None:
    volume = add_volume(scene)
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=stand_in_factory(tmp_path)
    )
    task = logic.start_segment(volume, "model.pt")
    assert task.warnings == []
    assert task.wait(60) is JobState.COMPLETED, task.error
    assert task.warnings == [TOO_LARGE, "second warning"]
    assert task.result is not None  # a warning does not stop the import
    assert task.status == f"completed; warning: {TOO_LARGE}; warning: second warning"
    assert "region of interest around the heart" in task.describe()


# ------------------------------------------------------------------ Segment with the real child
def tiny_checkpoint(path: Path) -> Path:
    """One random tiny network; on add_volume()'s volume (12 ml) it calls about half the voxels
    atrium. Its training labels are said to be 0.5 to 1 ml, so a whole-volume answer is far too
    large: the situation of the bundled model on a full-field scan, at a small scale."""
    torch = pytest.importorskip("torch")
    from tiny import tiny_model_config

    from dkuxnet.checkpoint import save_checkpoint
    from dkuxnet.config import DataConfig, TrainConfig
    from dkuxnet.model import build_model

    config = TrainConfig(model=tiny_model_config(), data=DataConfig(patch_size=(16, 16, 32)))
    torch.manual_seed(0)
    payload = {
        "kind": "model",
        "config": config.to_dict(),
        "networks": [build_model(config.model).state_dict()],
        "iteration": 0,
        "label_volume_ml": [0.5, 1.0],
    }
    return save_checkpoint(payload, path)


@pytest.mark.slow
def test_segment_with_an_roi_is_background_outside_it_on_the_input_grid(
    scene, tmp_path: Path, one_thread
) -> None:
    """A volume under a transform, the ROI placed in world coordinates around part of it."""
    import slicer

    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    volume = add_volume(scene)
    to_parent = matrix(rotation(2, math.pi / 2), (5.0, 2.0, -3.0))
    volume.SetAndObserveTransformNodeID(add_transform(scene, to_parent).GetID())
    local, world = voxel_centres(volume)
    roi = add_roi(scene, world.mean(axis=0) + SHIFT, size=SIZE)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")  # the real command

    whole = logic.start_segment(volume, checkpoint, device="cpu", keep_folder=True)
    assert whole.wait(TIMEOUT) is JobState.COMPLETED, whole.error
    assert len(whole.warnings) == 1 and "region of interest around the heart" in whole.warnings[0]
    assert whole.warnings[0] in whole.status
    task = logic.start_segment(volume, checkpoint, device="cpu", keep_folder=True, roi_node=roi)
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error

    exported = bridge.volume_from_node(volume)
    with_roi = read_volume(task.job.folder / "prediction.nrrd")
    assert with_roi.same_geometry(exported), with_roi.geometry_differences(exported)
    # A voxel of this axis-aligned grid is predicted when it meets the box (rounded outward):
    # its centre is within half a voxel of it. Every other voxel is background.
    bounds = bridge.roi_bounds_in_volume_frame(roi, volume)
    half_voxel = np.abs(ijk_to_ras(volume)[:3, :3]).sum(axis=1) / 2  # per R, A, S
    near_box = in_box(local, bounds, margin=half_voxel).reshape(with_roi.array.shape)
    assert not near_box.all()
    assert not with_roi.array[~near_box].any()
    whole_label = read_volume(whole.job.folder / "prediction.nrrd").array
    assert whole_label[~near_box].any()  # without the ROI the model finds "atrium" out there
    # the segmentation shows exactly that label on the volume
    segmentation = task.result
    assert segmentation is not None
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(bridge.LEFT_ATRIUM)
    on_grid = bridge.export_segment(segmentation, segment_id, volume)
    assert on_grid.same_geometry(exported)
    np.testing.assert_array_equal(on_grid.array, (with_roi.array > 0).astype(np.uint8))
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()
    assert slicer.util.arrayFromVolume(volume).shape == with_roi.array.shape


@pytest.mark.slow
def test_an_roi_off_the_image_fails_with_a_message(scene, tmp_path: Path, one_thread) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    volume = add_volume(scene)
    _, world = voxel_centres(volume)
    roi = add_roi(scene, world.max(axis=0) + 100.0, size=(10.0, 10.0, 10.0))
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")
    task = logic.start_segment(volume, checkpoint, device="cpu", roi_node=roi)
    assert task.wait(TIMEOUT) is JobState.FAILED
    assert "does not overlap the image" in task.error
    assert task.error.endswith(logic_module.ROI_PANEL_WORDS)
    assert task.result is None
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
