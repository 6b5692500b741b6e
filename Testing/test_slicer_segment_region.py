"""The *Segment region* box (``DKUXNetSegmentLib.segment_region``) on slicer-core, real MRML.

On a scan of the whole chest the bundled model needs a box around the heart. The panel says so
and offers *Place box* when the scan's field of view holds far more than the training crops or
when the volume check found the result far too large; the box starts at the volume's centre,
the size of a training crop clipped to the volume, and Segment uses it.

The oracle for the box is numpy on the volume's IJK->RAS matrix and the parent transform's
matrix (the voxel-edge corners taken to world), not MRML's bounds, which the code uses.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import types

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
region = pytest.importorskip("DKUXNetSegmentLib.segment_region")

from test_slicer_widget import make_panel, panel_module  # noqa: E402, F401 (a fixture)

from dkuxnet.errors import InputError  # noqa: E402
from dkuxnet.jobs import JobState  # noqa: E402

TIMEOUT = 60
CROP = np.array(region.TRAINING_CROP_MM)
# A whole-chest field of view: 360 x 360 x 55 mm, as the 576 x 576 x 88 challenge scans.
CHEST_SHAPE_KJI, CHEST_SPACING = (11, 48, 48), (7.5, 7.5, 5.0)


def rotation_z(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def add_volume(scene, shape_kji, spacing, rotation=None, origin=(0.0, 0.0, 0.0), name="scan"):
    """A scalar volume with this IJK->RAS (columns: rotation x spacing; origin) and data."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    data = np.random.default_rng(0).normal(100, 20, shape_kji).astype(np.float32)
    slicer.util.updateVolumeFromArray(node, data)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = (np.eye(3) if rotation is None else rotation) * np.asarray(spacing)
    ijk_to_ras[:3, 3] = origin
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node, ijk_to_ras


def add_translation(scene, node, offset):
    """Put ``node`` under a new linear transform that translates by ``offset`` (mm)."""
    import slicer

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    return matrix


def world_box(ijk_to_ras, shape_kji, parent):
    """Centre and RAS-aligned extent of the volume's voxel-edge box in world, by numpy."""
    edges = [(-0.5, n - 0.5) for n in shape_kji[::-1]]  # i, j, k
    corners = np.array([[*c, 1.0] for c in itertools.product(*edges)]).T  # (4, 8)
    world = (parent @ ijk_to_ras @ corners)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    return (low + high) / 2, high - low


def centre_world(roi) -> np.ndarray:
    centre = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(centre)
    return np.array(centre)


def roi_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


# ------------------------------------------------------------------ where the box goes
def test_box_is_a_training_crop_at_the_centre_of_a_translated_chest_scan(scene) -> None:
    node, ijk_to_ras = add_volume(scene, CHEST_SHAPE_KJI, CHEST_SPACING, origin=(-170, -160, 20))
    parent = add_translation(scene, node, (100.0, -50.0, 30.0))
    roi = region.place_segment_region(scene, node)
    centre, extent = world_box(ijk_to_ras, CHEST_SHAPE_KJI, parent)
    np.testing.assert_allclose(extent, (360.0, 360.0, 55.0))
    np.testing.assert_allclose(centre_world(roi), centre, atol=1e-9)
    assert centre_world(roi)[0] == pytest.approx(-170 - 3.75 + 180 + 100)  # by hand, along R
    np.testing.assert_allclose(roi.GetSize(), CROP)  # 55 mm deep: the scan's depth, not more
    assert roi.GetName() == region.SEGMENT_REGION_NAME
    assert roi.GetParentTransformNode() is None
    display = roi.GetDisplayNode()
    assert display.GetHandlesInteractive() and not display.GetFillVisibility()
    assert display.GetVisibility()
    # inside: the centre and a point just within the box's face; outside: just beyond it
    assert roi.IsPointInROIWorld(centre)
    assert roi.IsPointInROIWorld(centre + [0.0, CROP[1] / 2 - 0.1, 0.0])
    assert not roi.IsPointInROIWorld(centre + [0.0, CROP[1] / 2 + 0.1, 0.0])


def test_box_is_clipped_to_a_small_rotated_volume(scene) -> None:
    shape, spacing = (20, 30, 40), (1.25, 1.0, 2.0)  # 50 x 30 x 40 mm along i, j, k
    node, ijk_to_ras = add_volume(scene, shape, spacing, rotation_z(30.0), origin=(5, -7, 11))
    parent = add_translation(scene, node, (-12.0, 4.0, 60.0))
    roi = region.place_segment_region(scene, node)
    centre, extent = world_box(ijk_to_ras, shape, parent)
    np.testing.assert_allclose(centre_world(roi), centre, atol=1e-9)
    np.testing.assert_allclose(roi.GetSize(), np.minimum(CROP, extent), atol=1e-9)
    assert np.all(np.asarray(roi.GetSize()) < CROP)  # clipped along every axis
    # the box lies inside the volume's world bounds (so Segment's crop is not empty)
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)  # from the ROI's polydata: float32 points
    low, high = centre - extent / 2, centre + extent / 2
    assert np.all(np.array(bounds[0::2]) >= low - 1e-5)
    assert np.all(np.array(bounds[1::2]) <= high + 1e-5)


def test_a_second_click_moves_the_same_box_even_under_a_transform(scene) -> None:
    first, _ = add_volume(scene, CHEST_SHAPE_KJI, CHEST_SPACING, name="first")
    user_roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", region.SEGMENT_REGION_NAME)
    user_roi.SetXYZ(1.0, 2.0, 3.0)  # the user's own box of the same name: left alone
    user_roi.SetSize(10.0, 10.0, 10.0)
    roi = region.place_segment_region(scene, first)
    assert roi is not user_roi
    roi.SetXYZ(40.0, -30.0, 10.0)  # the user drags it, then puts it under a transform
    add_translation(scene, roi, (0.0, 25.0, 0.0))
    second, ijk_to_ras = add_volume(scene, (10, 20, 30), (2.0, 2.0, 3.0), origin=(50, 60, 70))
    parent = add_translation(scene, second, (5.0, 5.0, -5.0))
    again = region.place_segment_region(scene, second)
    assert again is roi
    assert roi_nodes(scene) == [user_roi, roi]
    centre, extent = world_box(ijk_to_ras, (10, 20, 30), parent)
    np.testing.assert_allclose(centre_world(roi), centre, atol=1e-9)
    np.testing.assert_allclose(roi.GetSize(), np.minimum(CROP, extent), atol=1e-9)
    np.testing.assert_allclose(user_roi.GetSize(), (10.0, 10.0, 10.0))


def test_a_volume_without_image_data_gets_no_box(scene) -> None:
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        region.place_segment_region(scene, empty)
    assert roi_nodes(scene) == []
    assert region.field_of_view_ratio(empty) == 0.0


# ------------------------------------------------------------------ when it is offered
def finished(volume_node, checks, state=JobState.COMPLETED):
    """What the advice reads of a SegmentTask."""
    return types.SimpleNamespace(state=state, volume_node_id=volume_node.GetID(), checks=checks)


def test_advice_for_a_chest_scan_and_for_a_result_far_too_large(scene) -> None:
    chest, _ = add_volume(scene, CHEST_SHAPE_KJI, CHEST_SPACING, name="chest")
    crop, _ = add_volume(scene, (44, 72, 96), (1.25, 1.25, 1.25), name="crop")  # 120x90x55 mm
    ratio = 360 * 360 * 55 / math.prod(region.TRAINING_CROP_MM)
    assert region.field_of_view_ratio(chest) == pytest.approx(ratio)  # 12
    assert region.field_of_view_ratio(crop) == pytest.approx(1.0)
    advice = region.segment_region_advice(chest)
    assert advice is not None and "Place box" in advice and f"about {ratio:.0f} times" in advice
    roi = region.place_segment_region(scene, chest)
    assert region.segment_region_advice(chest, roi) is None  # a box is chosen already
    assert region.segment_region_advice(crop) is None
    assert region.segment_region_advice(None) is None

    too_large = finished(crop, ["too_large"])
    assert region.segment_region_advice(crop, None, too_large) == region.TOO_LARGE_ADVICE
    assert region.segment_region_advice(crop, roi, too_large) == region.TOO_LARGE_ADVICE
    assert region.segment_region_advice(crop, None, finished(crop, ["empty"])) is None
    assert region.segment_region_advice(crop, None, finished(chest, ["too_large"])) is None
    running = finished(crop, ["too_large"], JobState.RUNNING)
    assert region.segment_region_advice(crop, None, running) is None


def test_factor_sits_between_training_crops_and_a_whole_scan() -> None:
    largest_crop = 152.5 * 100 * 55 / math.prod(region.TRAINING_CROP_MM)
    assert largest_crop < region.FIELD_OF_VIEW_FACTOR < 12


# ------------------------------------------------------------------ the panel
def test_panel_leads_from_a_too_large_result_to_a_box_segment_uses(
    panel_module,  # noqa: F811 (the fixture imported above)
    scene,
    tmp_path,
    monkeypatch,
) -> None:
    """Segment -> far too large -> the panel says what to do -> Place box -> Segment uses it."""
    import slicer

    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *a, **k: None)
    monkeypatch.setattr(slicer.util, "resetThreeDViews", lambda *a, **k: None)
    monkeypatch.setenv("FAKE_DKUXNET_WARN_CHECK", "too_large")
    volume, _ = add_volume(scene, (44, 72, 96), (1.25, 1.25, 1.25))  # a training crop's size
    widget = make_panel(panel_module, scene, tmp_path)
    ui = widget.ui
    assert widget._parameters().input_volume is volume
    widget._render()
    assert ui.placeSegmentRegionButton.visible is False and ui.segmentRegionAdviceLabel.text == ""

    started: list[dict] = []  # the keyword arguments of each Segment the panel starts
    segment = widget.logic.logic.start_segment

    def recording_segment(*args, **kwargs):
        started.append(kwargs)
        return segment(*args, **kwargs)

    monkeypatch.setattr(widget.logic.logic, "start_segment", recording_segment)

    def segment_and_wait():
        widget.onSegment()
        task = widget.logic.controller.segment_task
        deadline = time.monotonic() + TIMEOUT
        while not task.state.is_final and time.monotonic() < deadline:
            widget.onTimer()
            time.sleep(0.05)
        assert task.state is JobState.COMPLETED, task.error
        return task

    task = segment_and_wait()
    assert started[-1]["roi_node"] is None and task.checks == ["too_large"]
    assert ui.segmentRegionAdviceLabel.text == region.TOO_LARGE_ADVICE
    assert ui.segmentRegionAdviceLabel.visible is True
    assert ui.placeSegmentRegionButton.visible is True and ui.placeSegmentRegionButton.enabled

    jumped: list[tuple] = []
    slicer.modules.markups.logic = lambda: types.SimpleNamespace(
        JumpSlicesToLocation=lambda *a: jumped.append(a)
    )
    widget.onPlaceSegmentRegion()
    roi = region.find_segment_region(scene)
    assert roi is not None and widget._parameters().roi is roi
    assert jumped == [(*centre_world(roi), True)]
    assert widget._parameters().roi is roi  # what the selector shows (parameter node -> GUI)

    monkeypatch.delenv("FAKE_DKUXNET_WARN_CHECK")
    task = segment_and_wait()
    assert started[-1]["roi_node"] is roi
    assert task.job.config["roi"]["node"] == region.SEGMENT_REGION_NAME
    assert task.checks == []
    assert ui.placeSegmentRegionButton.visible is False and ui.segmentRegionAdviceLabel.text == ""

    widget.onPlaceSegmentRegion()  # again: the same box, not a second one
    assert roi_nodes(scene) == [roi]
