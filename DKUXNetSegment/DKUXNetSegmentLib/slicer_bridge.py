"""MRML nodes <-> :class:`dkuxnet.io.Volume`: the only code that touches MRML voxel arrays.

Needs only the ``slicer`` namespace (MRML, ``slicer.util`` array helpers and the static methods
of ``vtkSlicerSegmentationsModuleLogic``), never ``slicer.app``, ``slicer.modules`` or qt, so it
runs both inside Slicer and on the ``slicer-core`` package that the tests use.

Coordinates. Slicer stores a volume's geometry as one IJK->RAS matrix; ``Volume`` (like ITK and
NRRD files as SimpleITK reads them) uses LPS: ``origin`` (x, y, z), ``spacing`` (x, y, z) and a
``direction`` matrix whose columns are the i, j, k axes. The two differ by negating x and y::

    IJKToRAS[:3, :4] = diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]

This module is the one place where that conversion happens (:func:`ijk_to_ras_from_volume`
and :func:`volume_geometry_from_ijk_to_ras`). Arrays are (k, j, i) = (z, y, x) on both sides.

Maps computed on a volume's grid (the uncertainty map) become new scalar volumes on that exact
grid (:func:`add_volume_on_grid_of`), shown in colour over the image (:func:`set_color_display`,
:func:`show_in_slice_views`).

Parent transforms are not hardened: a volume under a transform yields its local geometry (what
the child process sees), and a label computed on that grid is imported from under the same
transform, so it lands on the volume wherever the transform puts it. A new segmentation is placed
under the volume's transform; an existing one keeps its own, and Slicer maps the label into it.
A region of interest (a markups ROI box, possibly rotated, possibly under its own transform) is
handed to the child the same way, as its eight corners in the volume's local frame
(:func:`roi_corners_in_volume_frame`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import slicer
import vtk

from dkuxnet.errors import InputError
from dkuxnet.io import Volume

log = logging.getLogger(__name__)

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
LEFT_ATRIUM = "Left atrium"
# Slicer's GenericAnatomyColors has no left atrium; this is the warm red Slicer uses for
# heart chambers, readable on both MR and CT grey levels.
LEFT_ATRIUM_COLOR = (0.808, 0.298, 0.337)
DEFAULT_SEGMENT_NAMES: Mapping[int, str] = {1: LEFT_ATRIUM}


# ---------------------------------------------------------------------------------- geometry
def ijk_to_ras_from_volume(volume: Volume) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a (LPS) ``Volume``."""
    spacing = np.asarray(volume.spacing, dtype=float)
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ direction @ np.diag(spacing)
    matrix[:3, 3] = RAS_FROM_LPS @ np.asarray(volume.origin, dtype=float)
    return matrix


def volume_geometry_from_ijk_to_ras(
    matrix: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """``(spacing, origin, direction)`` in LPS from a 4x4 IJK->RAS matrix."""
    lps = RAS_FROM_LPS @ np.asarray(matrix, dtype=float)[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    s = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    o = (float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3]))
    return s, o, direction


def _ijk_to_ras_of(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    vtk_matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vtk_matrix)
    return slicer.util.arrayFromVTKMatrix(vtk_matrix)


def _grid_of(node: slicer.vtkMRMLVolumeNode) -> Volume:
    """The node's grid as a ``Volume`` whose array is a view of the node's voxels (no copy)."""
    if node.GetImageData() is None:
        raise ValueError(f"volume node {node.GetName()!r} has no image")
    spacing, origin, direction = volume_geometry_from_ijk_to_ras(_ijk_to_ras_of(node))
    array = slicer.util.arrayFromVolume(node)
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction)


def roi_bounds_in_volume_frame(
    roi_node: slicer.vtkMRMLMarkupsROINode, volume_node: slicer.vtkMRMLVolumeNode
) -> tuple[float, float, float, float, float, float]:
    """The axis-aligned box around an ROI's 8 corners, in the volume node's own RAS frame.

    See :func:`roi_corners_in_volume_frame`; a rotated ROI gives the (larger) axis-aligned box
    around it.

    Returns:
        ``(R1, A1, S1, R2, A2, S2)``: the low corner and the high corner, in millimetres (the
        six-number form of ``dkuxnet predict --roi``).

    Raises:
        InputError: as :func:`roi_corners_in_volume_frame`.
    """
    ras = roi_corners_in_volume_frame(roi_node, volume_node).T  # (3, 8)
    (r1, a1, s1), (r2, a2, s2) = ras.min(axis=1).tolist(), ras.max(axis=1).tolist()
    return r1, a1, s1, r2, a2, s2


def roi_corners_in_volume_frame(
    roi_node: slicer.vtkMRMLMarkupsROINode, volume_node: slicer.vtkMRMLVolumeNode
) -> np.ndarray:
    """An ROI's eight corners ``(8, 3)`` in the volume node's own RAS frame, in millimetres.

    The frame is the volume's before its parent transform, i.e. the physical space of the file
    :func:`volume_from_node` exports (in RAS, not LPS). The ROI may be rotated and may be under a
    transform of its own; both transforms are taken into account, so the corners are where the
    views show them. ``dkuxnet predict --roi`` takes the 24 numbers and crops the tightest voxel
    box around them (a rotated ROI on an oblique scan is not widened to its RAS-aligned hull).

    Raises:
        InputError: the ROI has no size yet (not placed), or the ROI or the volume is under a
            non-linear transform (a box cannot be mapped through it).
    """
    for node in (roi_node, volume_node):
        transform = node.GetParentTransformNode()
        if transform is not None and not transform.IsTransformToWorldLinear():
            raise InputError(
                f"the region of interest cannot be mapped onto {volume_node.GetName()!r}: "
                f"{node.GetName()!r} is under the non-linear transform {transform.GetName()!r}. "
                "Harden that transform (Data module: right-click, Harden transform) or choose "
                "no region of interest."
            )
    object_bounds = [0.0] * 6
    roi_node.GetObjectBounds(object_bounds)  # the box in its own (object) frame, centred on 0
    extent = np.reshape(object_bounds, (3, 2))  # per axis: (low, high)
    if not np.all(extent[:, 1] > extent[:, 0]):
        raise InputError(
            f"the region of interest {roi_node.GetName()!r} has no size yet: place the box "
            "around the heart (Markups ROI tool), then segment"
        )
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*extent)]).T  # (4, 8)
    roi_to_volume = vtk.vtkMatrix4x4()  # ROI's parent frame -> volume's parent frame
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        roi_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), roi_to_volume
    )
    object_to_node = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToNodeMatrix())
    ras = (slicer.util.arrayFromVTKMatrix(roi_to_volume) @ object_to_node @ corners)[:3]
    return np.ascontiguousarray(ras.T)


# ---------------------------------------------------------------------------------- volumes
def volume_from_node(node: slicer.vtkMRMLVolumeNode) -> Volume:
    """A copy of a scalar or labelmap volume node's voxels and geometry."""
    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume node {getattr(node, 'GetName', lambda: None)()!r} has no image")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    spacing, origin, direction = volume_geometry_from_ijk_to_ras(_ijk_to_ras_of(node))
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction)


def update_node_from_volume(node: slicer.vtkMRMLVolumeNode, volume: Volume) -> None:
    """Set a volume node's voxels and geometry from a ``Volume``."""
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_volume(volume)))
    node.Modified()


def add_volume_node(
    scene: slicer.vtkMRMLScene,
    volume: Volume,
    name: str,
    class_name: str = "vtkMRMLScalarVolumeNode",
    display: bool = True,
) -> slicer.vtkMRMLVolumeNode:
    """A new volume node in ``scene`` holding ``volume`` (e.g. a phantom in the self-test).

    ``display=True`` gives it the default display nodes, without which the views cannot show
    it; helper nodes that are never shown pass ``False``.
    """
    node = scene.AddNewNodeByClass(class_name, name)
    update_node_from_volume(node, volume)
    if display:
        node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------- overlays
def add_volume_on_grid_of(
    reference_node: slicer.vtkMRMLVolumeNode, volume: Volume, name: str
) -> slicer.vtkMRMLScalarVolumeNode:
    """A new scalar volume with ``volume``'s voxels on the exact grid of ``reference_node``.

    For maps the child computed on the volume's exported grid (an uncertainty map): the voxels
    come from ``volume``, the IJK->RAS matrix is copied from ``reference_node`` (no round trip
    through a file header) and the node goes under the reference's parent transform, so the
    map lies on the volume wherever the transform puts it. The name is made unique.

    Raises:
        ValueError: ``volume`` is not on the reference's grid (size, spacing, origin or
            direction differ beyond :data:`dkuxnet.io.GEOMETRY_TOLERANCE`).
    """
    differences = volume.geometry_differences(_grid_of(reference_node))
    if differences:
        raise ValueError(
            f"the map is not on the grid of {reference_node.GetName()!r}: " + "; ".join(differences)
        )
    scene = reference_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    matrix = vtk.vtkMatrix4x4()
    reference_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    return node


def first_node_id(scene: slicer.vtkMRMLScene, node_ids: Sequence[str]) -> str | None:
    """The first of ``node_ids`` that the scene holds (colour tables differ between the
    application and ``slicer-core``), or ``None``."""
    return next((i for i in node_ids if scene.GetNodeByID(i) is not None), None)


def set_color_display(
    node: slicer.vtkMRMLScalarVolumeNode,
    color_node_id: str | None,
    window: tuple[float, float],
    hide_below: float | None = None,
) -> None:
    """Show a scalar map in colour: a colour table, a fixed window and transparent low values.

    Args:
        node: the volume (with its display node).
        color_node_id: the colour table; ``None`` keeps the default (grey).
        window: the values at the two ends of the colour table, ``(low, high)``.
        hide_below: voxels below this value are transparent in the slice views (the
            display node's lower threshold); ``None`` shows every voxel.
    """
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    was_modifying = display.StartModify()
    if color_node_id is not None:
        display.SetAndObserveColorNodeID(color_node_id)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*window)
    display.SetAutoThreshold(False)
    display.SetApplyThreshold(hide_below is not None)
    if hide_below is not None:
        display.SetThreshold(hide_below, max(window[1], hide_below) + 1.0)
    display.EndModify(was_modifying)


def show_in_slice_views(
    scene: slicer.vtkMRMLScene,
    background: slicer.vtkMRMLVolumeNode | None = None,
    foreground: slicer.vtkMRMLVolumeNode | None = None,
    foreground_opacity: float | None = None,
) -> int:
    """Put volumes into the background / foreground layer of every slice view.

    Works on the views' composite nodes, so it needs no application (a scene without views has
    none: nothing happens). Layers passed as ``None`` are left as they are.

    Returns:
        The number of slice views changed.
    """
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(foreground_opacity)
    return int(composites.GetNumberOfItems())


def remove_from_foreground(scene: slicer.vtkMRMLScene, node_ids: Sequence[str]) -> int:
    """Empty the foreground layer of every slice view that shows one of ``node_ids``.

    Returns:
        The number of slice views changed.
    """
    wanted = set(node_ids)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    changed = 0
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if composite.GetForegroundVolumeID() in wanted:
            composite.SetForegroundVolumeID(None)
            changed += 1
    return changed


def node_ids_with_attribute(
    scene: slicer.vtkMRMLScene, class_name: str, attribute: str
) -> list[str]:
    """The IDs of the nodes of ``class_name`` that have ``attribute`` set."""
    nodes = scene.GetNodesByClass(class_name)
    found = (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems()))
    return [node.GetID() for node in found if node.GetAttribute(attribute) is not None]


# ---------------------------------------------------------------------------------- segmentations
def new_segmentation_node(
    reference_node: slicer.vtkMRMLVolumeNode, name: str | None = None
) -> slicer.vtkMRMLSegmentationNode:
    """An empty segmentation node named after ``reference_node`` and placed on its grid.

    The node goes under the volume's parent transform *before* its reference geometry is set:
    ``SetReferenceImageGeometryParameterFromVolumeNode`` maps the volume's geometry through
    the transform between the two nodes' parents (``vtkMRMLSegmentationNode.cxx``, Slicer
    5.10), so in the other order the transform was folded into the stored geometry and then
    applied again, and the Segment Editor edited on a shifted or rotated grid.
    """
    scene = reference_node.GetScene()
    name = name or f"{reference_node.GetName()} segmentation"
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    seg_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    seg_node.CreateDefaultDisplayNodes()
    return seg_node


def reference_geometry(segmentation_node: slicer.vtkMRMLSegmentationNode) -> str:
    """The segmentation's ``Reference image geometry`` conversion parameter (``""``: none).

    The text is Slicer's serialised grid: the 16 values of the IJK->RAS matrix (row by row, in
    the segmentation node's own frame) and the 6 values of the extent, ``;``-separated.
    """
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    # "name|value|description&..." (vtkSegmentation::SerializeAllConversionParameters); asking
    # GetConversionParameter for a parameter the node does not have logs an error.
    serialised = segmentation_node.GetSegmentation().SerializeAllConversionParameters()
    for entry in serialised.split("&"):
        parts = entry.split("|")
        if len(parts) >= 2 and parts[0] == name:
            return parts[1]
    return ""


def import_label(
    label: Volume,
    reference_node: slicer.vtkMRMLVolumeNode,
    segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
    segment_names: Mapping[int, str] = DEFAULT_SEGMENT_NAMES,
    color: tuple[float, float, float] = LEFT_ATRIUM_COLOR,
    closed_surface: bool = True,
) -> slicer.vtkMRMLSegmentationNode:
    """Put a label map into a segmentation node, one segment per label value.

    Args:
        label: integer label map (0 = background) on the grid of ``reference_node``.
        reference_node: the volume the label was computed from; it is only read.
        segmentation_node: ``None`` (the default) creates a new node named after the volume.
            An existing node is what the user asked to be replaced: segments with the same
            names are replaced, the user's other segments are kept.
        segment_names: label value -> segment name; other values become "Label N".
        color: colour of the first segment (the left atrium).
        closed_surface: also build the 3D (closed surface) representation.

    Returns:
        The segmentation node; its segment IDs follow ``segment_names`` order.
    """
    scene = reference_node.GetScene()
    if segmentation_node is None:
        segmentation_node = new_segmentation_node(reference_node)
    elif not reference_geometry(segmentation_node):
        # An empty node from the selector's "Create new segmentation": give it the volume's
        # grid (in its own frame), as the Segment Editor does when a source volume is chosen.
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = segmentation_node.GetSegmentation()
    values = [int(v) for v in np.unique(label.array) if v != 0]
    wanted = {v: segment_names.get(v, f"Label {v}") for v in values} or dict(segment_names)
    for name in wanted.values():
        old_id = segmentation.GetSegmentIdBySegmentName(name)
        if old_id:
            segmentation.RemoveSegment(old_id)

    before = set(_segment_ids(segmentation_node))
    if values:
        # No display node: ImportLabelmapToSegmentationNode would take segment names and colours
        # from its colour table. The label is on the grid of the volume's local (untransformed)
        # coordinates, so it goes under the volume's transform; the import then applies only the
        # transform between that one and the segmentation's (none for a new segmentation).
        label_node = add_volume_node(
            scene,
            _as_uint_label(label),
            "dkuxnet temporary label",
            "vtkMRMLLabelMapVolumeNode",
            display=False,
        )
        label_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                label_node, segmentation_node
            )
        finally:
            _remove_node(label_node)
        if not ok:
            raise RuntimeError("importing the label map into the segmentation failed")
    new_ids = [sid for sid in _segment_ids(segmentation_node) if sid not in before]
    # ImportLabelmapToSegmentationNode adds one segment per value, in increasing value order.
    for value, segment_id in zip(values, new_ids, strict=True):
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(wanted[value])
        if value == min(values):
            segment.SetColor(*color)
    if not values:
        log.warning("the label map is empty; adding empty segment(s) %s", list(wanted.values()))
        for name in wanted.values():
            segmentation.AddEmptySegment("", name, list(color))

    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility2D(True)
    display.SetVisibility3D(True)
    if closed_surface and not segmentation_node.CreateClosedSurfaceRepresentation():
        log.warning("could not create the 3D (closed surface) representation")
    return segmentation_node


def export_segment(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_id: str,
    reference_node: slicer.vtkMRMLVolumeNode,
) -> Volume:
    """One segment as a 0/1 uint8 label ``Volume`` on the grid of ``reference_node``.

    The grid is the reference's local one (as :func:`volume_from_node` gives it); Slicer maps the
    segment there through any transforms of the two nodes. Nothing is left in the scene.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise ValueError(
            f"segmentation {segmentation_node.GetName()!r} has no segment {segment_id!r}"
        )
    scene = segmentation_node.GetScene()
    color_tables_before = _node_ids(scene, "vtkMRMLColorTableNode")
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "dkuxnet temporary export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, label_node, reference_node
        )
        if not ok:
            raise RuntimeError(f"exporting segment {segment_id!r} failed")
        exported = volume_from_node(label_node)
    finally:
        _remove_node(label_node)
        # The export also adds a "..._ColorTable" node for the label's display node
        # (vtkSlicerSegmentationsModuleLogic::ExportSegmentsToLabelmapNode, Slicer 5.6 to 5.10).
        # It is as temporary as the label node and would otherwise be saved with the scene.
        for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - color_tables_before:
            scene.RemoveNode(scene.GetNodeByID(node_id))
    array = (exported.array > 0).astype(np.uint8)
    return Volume(
        array=array, spacing=exported.spacing, origin=exported.origin, direction=exported.direction
    )


def segment_ids(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[str]:
    """The IDs of all segments of a segmentation node, in order."""
    return _segment_ids(segmentation_node)


# ---------------------------------------------------------------------------------- helpers
def _segment_ids(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _node_ids(scene: slicer.vtkMRMLScene, class_name: str) -> set[str]:
    count = scene.GetNumberOfNodesByClass(class_name)
    return {scene.GetNthNodeByClass(i, class_name).GetID() for i in range(count)}


def _as_uint_label(label: Volume) -> Volume:
    array = np.asarray(label.array)
    if array.dtype.kind not in "ui" or array.min() < 0:
        raise ValueError(f"a label map must hold non-negative integers, got {array.dtype}")
    if array.dtype != np.uint8 and array.max() <= 255:
        array = array.astype(np.uint8)
    return Volume(
        array=array, spacing=label.spacing, origin=label.origin, direction=label.direction
    )


def _remove_node(node: slicer.vtkMRMLNode) -> None:
    scene = node.GetScene()
    if scene is None:
        return
    if hasattr(node, "GetNumberOfDisplayNodes"):
        display_ids = [node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())]
        for display_id in display_ids:
            display = scene.GetNodeByID(display_id) if display_id else None
            if display is not None:
                scene.RemoveNode(display)
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)
