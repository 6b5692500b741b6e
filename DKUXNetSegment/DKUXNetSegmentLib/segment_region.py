"""The *Segment region*: a box the panel places for scans that show more than the heart.

The bundled model learned the left atrium from scans cropped around the heart (model card,
``Resources/Models/README.md``); on a scan of the whole chest it can take other tissue for the
atrium, and a box around the heart brings most of it back (figures: the model card's
"Robustness"). The panel therefore offers *Place box* when :func:`segment_region_advice` says so: after
a segmentation that the volume check found far too large, or before one, when the scan covers
far more than the training crops. :func:`place_segment_region` puts a markups ROI named
"Segment region" at the volume's centre, the size of a training crop, with its handles on, for
the user to drag over the heart; Segment then predicts inside it only.

Only MRML is used here (no qt, no ``slicer.app``): the tests run it on slicer-core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import slicer
import vtk

from dkuxnet.errors import InputError
from dkuxnet.jobs import JobState

SEGMENT_REGION_NAME = "Segment region"
# Marks the ROI that place_segment_region made, so a second click moves it instead of adding one.
SEGMENT_REGION_ATTRIBUTE = "DKUXNet.SegmentRegion"
# The bundled model's training crops, (R, A, S) mm: the median size of the 80 training scans
# (x, y in-plane around the atrium, z the scan's full depth; measured on the imported h5 crops:
# median 120 x 89 x 55 mm, largest 152.5 x 100 x 55 mm, all at 0.625 mm). The box starts this size.
TRAINING_CROP_MM = (120.0, 90.0, 55.0)
# Offer the box before segmenting when the scan's field of view (its voxel-edge extent in its
# own frame) holds more than this many training crops. The whole 576 x 576 x 88 challenge scan
# (360 x 360 x 55 mm) holds 12; the largest training crop 1.4; a loose crop around the heart
# (e.g. 200 x 150 x 80 mm) about 4.
FIELD_OF_VIEW_FACTOR = 4.0

# What the advice found, then what to do about it in the front end's own controls.
TOO_LARGE_FINDING = (
    "The result is far larger than any left atrium the model learned from: this scan shows "
    "more than the heart."
)
FIELD_OF_VIEW_FINDING = (
    "This scan covers about {ratio:.0f} times the space of the scans the model learned from "
    "(cropped around the heart, about {crop}); on such scans it can take other tissue for the "
    "atrium."
)
#: What to do, in the Slicer panel's words (a front end with other controls brings its own).
PLACE_BOX_PANEL_WORDS: Mapping[str, str] = {
    "too_large": "Click Place box, drag the box and its handles over the heart in the slice "
    "views, then click Segment again: only the inside of the box is segmented.",
    "field_of_view": "Click Place box and fit the box over the heart before you segment.",
}
TOO_LARGE_ADVICE = f"{TOO_LARGE_FINDING} {PLACE_BOX_PANEL_WORDS['too_large']}"


def field_of_view_ratio(volume_node: slicer.vtkMRMLVolumeNode) -> float:
    """How many training crops (:data:`TRAINING_CROP_MM`) the volume's field of view holds.

    The field of view is voxel count times spacing along each axis of the volume's own frame
    (a rigid parent transform does not change it); 0 for a volume without image data.
    """
    image = volume_node.GetImageData()
    if image is None:
        return 0.0
    extent_mm = np.multiply(image.GetDimensions(), volume_node.GetSpacing())
    return float(np.prod(extent_mm) / math.prod(TRAINING_CROP_MM))


def segment_region_advice(
    volume_node: slicer.vtkMRMLVolumeNode | None,
    roi_node: slicer.vtkMRMLMarkupsROINode | None = None,
    task: Any = None,
    words: Mapping[str, str] = PLACE_BOX_PANEL_WORDS,
) -> str | None:
    """What the panel says above *Place box*; ``None``: nothing to say, the button is hidden.

    Args:
        volume_node: the volume Segment would use.
        roi_node: the region of interest chosen; with one, a large field of view needs no word.
        task: the last :class:`~DKUXNetSegmentLib.logic.SegmentTask`, if any. Its volume check
            counts when it completed on this volume and found the result ``"too_large"``.
        words: what to do, keyed ``"too_large"`` and ``"field_of_view"``
            (:data:`PLACE_BOX_PANEL_WORDS`: the panel's).
    """
    if volume_node is None:
        return None
    if (
        task is not None
        and task.state is JobState.COMPLETED
        and task.volume_node_id == volume_node.GetID()
        and "too_large" in task.checks
    ):
        return f"{TOO_LARGE_FINDING} {words['too_large']}"
    ratio = field_of_view_ratio(volume_node)
    if roi_node is None and ratio > FIELD_OF_VIEW_FACTOR:
        crop = " x ".join(f"{size / 10:g}" for size in TRAINING_CROP_MM) + " cm"
        finding = FIELD_OF_VIEW_FINDING.format(ratio=ratio, crop=crop)
        return f"{finding} {words['field_of_view']}"
    return None


def find_segment_region(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLMarkupsROINode | None:
    """The ROI :func:`place_segment_region` made in this scene, if it is still there."""
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(SEGMENT_REGION_ATTRIBUTE) is not None:
            return node
    return None


def place_segment_region(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLVolumeNode,
    size_mm: Sequence[float] = TRAINING_CROP_MM,
) -> slicer.vtkMRMLMarkupsROINode:
    """Put the "Segment region" ROI at the volume's centre, ready to be dragged over the heart.

    The box is ``size_mm`` along its axes (RAS for a new box), clipped to the volume's extent
    along them, and centred on the centre of the volume's bounds as the views show it (through
    the volume's parent transform). The ROI made by an earlier call is reused, keeping its own
    parent transform and orientation if the user gave it some (a non-linear transform is
    dropped, as Crop Volume's *Fit to volume* does); otherwise a new one is added. Its handles
    are made interactive and its fill hidden, as Crop Volume does for its ROI.

    Raises:
        InputError: the volume has no image data.
    """
    if volume_node.GetImageData() is None:
        raise InputError(f"the volume {volume_node.GetName()!r} has no image data to put a box on")
    roi = find_segment_region(scene)
    if roi is None:
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", SEGMENT_REGION_NAME)
        roi.SetAttribute(SEGMENT_REGION_ATTRIBUTE, "1")
    transform = roi.GetParentTransformNode()
    if transform is not None and not transform.IsTransformToWorldLinear():
        roi.SetAndObserveTransformNodeID(None)
    # world -> the ROI's object frame (its box axes, centred on the box), as
    # vtkSlicerCropVolumeLogic::FitROIToInputVolume does; GetSliceBounds applies the volume's
    # parent transform and then this matrix to the volume's voxel-edge corners.
    world_to_object = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        None, roi.GetParentTransformNode(), world_to_object
    )
    node_to_object = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(roi.GetObjectToNodeMatrix(), node_to_object)
    vtk.vtkMatrix4x4.Multiply4x4(node_to_object, world_to_object, world_to_object)
    bounds = [0.0] * 6
    volume_node.GetSliceBounds(bounds, world_to_object)
    low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
    centre_object = [*((low + high) / 2.0), 1.0]
    centre_node = roi.GetObjectToNodeMatrix().MultiplyPoint(centre_object)
    roi.SetXYZ(centre_node[:3])  # the centre in the ROI node's coordinates (its parent frame)
    roi.SetSize(*np.minimum(np.asarray(size_mm, np.float64), high - low))
    roi.CreateDefaultDisplayNodes()
    display = roi.GetDisplayNode()
    if display is not None:
        display.SetVisibility(True)
        display.SetHandlesInteractive(True)
        display.SetFillVisibility(False)
    return roi
