"""DKUXNetSegmentLib.slicer_bridge on real MRML (the slicer-core package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dkuxnet.io import Volume, read_volume, write_volume

pytest.importorskip("slicer", reason="slicer-core is not installed")
bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")


def oblique_ijk_to_ras() -> np.ndarray:
    """An oblique, anisotropic IJK->RAS matrix with a non-trivial origin."""
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ rx @ np.diag([0.625, 0.8, 2.5])
    matrix[:3, 3] = [-41.5, 17.25, 63.0]
    return matrix


def make_volume_node(scene, name="CT", shape=(6, 9, 11), matrix=None, dtype=np.int16):
    import slicer

    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=shape).astype(dtype)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    m = oblique_ijk_to_ras() if matrix is None else matrix
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    return node, array


def node_matrix(node) -> np.ndarray:
    import slicer
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def ellipsoid_label(shape=(6, 9, 11)) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = [(s - 1) / 2 for s in shape]
    r = [s / 3 for s in shape]
    inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    return inside.astype(np.uint8)


def test_geometry_conversion_round_trips() -> None:
    m = oblique_ijk_to_ras()
    spacing, origin, direction = bridge.volume_geometry_from_ijk_to_ras(m)
    np.testing.assert_allclose(spacing, [0.625, 0.8, 2.5])
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(origin, [41.5, -17.25, 63.0])  # LPS: x, y negated
    volume = Volume(np.zeros((2, 2, 2)), spacing, origin, direction)
    np.testing.assert_allclose(bridge.ijk_to_ras_from_volume(volume), m, atol=1e-12)


def test_volume_node_to_file_and_back(scene, tmp_path: Path) -> None:
    import slicer

    node, array = make_volume_node(scene)
    volume = bridge.volume_from_node(node)
    assert volume.array.shape == array.shape and volume.array.dtype == array.dtype
    np.testing.assert_array_equal(volume.array, array)

    # what Slicer itself writes, as SimpleITK reads it, is the same LPS geometry
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    slicer_file = tmp_path / "slicer.nrrd"
    storage.SetFileName(str(slicer_file))
    assert storage.WriteData(node)
    reference = Volume.from_sitk(sitk.ReadImage(str(slicer_file)))
    np.testing.assert_array_equal(reference.array, array)
    assert volume.same_geometry(reference, tol=1e-6), volume.geometry_differences(reference)

    ours = write_volume(volume, tmp_path / "ours.nrrd")
    back = read_volume(ours)
    np.testing.assert_array_equal(back.array, array)
    assert back.same_geometry(reference, tol=1e-6)

    # and into a fresh node: identical voxels and IJK->RAS
    node2 = bridge.add_volume_node(scene, back, "back")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node2), array)
    np.testing.assert_allclose(node_matrix(node2), node_matrix(node), atol=1e-9)


def test_label_to_new_segmentation_and_back(scene) -> None:
    import slicer

    node, array = make_volume_node(scene, name="Patient 7")
    before_array = array.copy()
    before_matrix = node_matrix(node)
    label = bridge.volume_from_node(node).with_array(ellipsoid_label())

    seg_node = bridge.import_label(label, node)
    assert seg_node.GetName() == "Patient 7 segmentation"
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetNthSegmentID(0)
    segment = segmentation.GetSegment(segment_id)
    assert segment.GetName() == "Left atrium"
    np.testing.assert_allclose(segment.GetColor(), bridge.LEFT_ATRIUM_COLOR)
    converter = slicer.vtkSegmentationConverter
    geometry = segmentation.GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName()
    )
    assert geometry == converter.SerializeImageGeometry(
        slicer.util.vtkMatrixFromArray(node_matrix(node)), node.GetImageData()
    )
    assert seg_node.GetNodeReferenceID("referenceImageGeometryRef") == node.GetID()
    assert seg_node.GetSegmentation().ContainsRepresentation(
        slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    )
    display = seg_node.GetDisplayNode()
    assert display is not None and display.GetVisibility2D() and display.GetVisibility3D()

    exported = bridge.export_segment(seg_node, segment_id, node)
    assert exported.array.dtype == np.uint8
    np.testing.assert_array_equal(exported.array, label.array)
    assert exported.same_geometry(label, tol=1e-6), exported.geometry_differences(label)

    # the user's volume is untouched and no helper nodes are left behind
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before_array)
    np.testing.assert_allclose(node_matrix(node), before_matrix)
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_second_prediction_makes_a_new_node_unless_replacing(scene) -> None:
    node, _ = make_volume_node(scene, name="Vol")
    label = bridge.volume_from_node(node).with_array(ellipsoid_label())
    first = bridge.import_label(label, node, closed_surface=False)
    # the user adds a segment of their own
    user_id = first.GetSegmentation().AddEmptySegment("", "My notes", [0.1, 0.2, 0.9])

    second = bridge.import_label(label, node, closed_surface=False)
    assert second.GetID() != first.GetID()
    assert second.GetName() != first.GetName()

    shifted = np.roll(ellipsoid_label(), 1, axis=2)
    replaced = bridge.import_label(label.with_array(shifted), node, segmentation_node=first)
    assert replaced is first
    segmentation = first.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    assert sorted(names) == ["Left atrium", "My notes"]
    assert segmentation.GetSegment(user_id) is not None
    la_id = segmentation.GetSegmentIdBySegmentName("Left atrium")
    np.testing.assert_array_equal(bridge.export_segment(first, la_id, node).array, shifted)


def test_known_shape_lands_on_exact_voxels_of_unaligned_grid(scene) -> None:
    """A label on the volume's grid comes back on the same voxels even for an odd grid."""
    matrix = oblique_ijk_to_ras()
    node, _ = make_volume_node(scene, shape=(5, 16, 7), matrix=matrix)
    label_array = np.zeros((5, 16, 7), np.uint8)
    label_array[1:4, 2:5, 0:3] = 1  # touches the border
    label_array[2, 10, 5] = 1  # a single voxel
    label = bridge.volume_from_node(node).with_array(label_array)
    seg_node = bridge.import_label(label, node, closed_surface=False)
    seg_id = seg_node.GetSegmentation().GetNthSegmentID(0)
    np.testing.assert_array_equal(bridge.export_segment(seg_node, seg_id, node).array, label_array)


def test_empty_label_gives_an_empty_segment(scene) -> None:
    node, _ = make_volume_node(scene)
    label = bridge.volume_from_node(node).with_array(np.zeros((6, 9, 11), np.uint8))
    seg_node = bridge.import_label(label, node, closed_surface=False)
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "Left atrium"


def test_bad_inputs_raise(scene) -> None:
    node, _ = make_volume_node(scene)
    label = bridge.volume_from_node(node).with_array(np.full((6, 9, 11), -1, np.int16))
    with pytest.raises(ValueError):
        bridge.import_label(label, node)
    seg_node = bridge.new_segmentation_node(node)
    with pytest.raises(ValueError):
        bridge.export_segment(seg_node, "nope", node)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError):
        bridge.volume_from_node(empty)


# ------------------------------------------------------------------ parent transforms
def parent_transform(scene, kind: str):
    """A linear transform node: a 30/-20 mm translation, or that plus an oblique rotation."""
    import vtk

    transform = vtk.vtkTransform()
    transform.Translate(30.0, -20.0, 5.0)
    if kind == "rotation":
        transform.RotateZ(30.0)
        transform.RotateX(-20.0)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", kind)
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def world_centroid(volume_node, label_array: np.ndarray) -> np.ndarray:
    """Where the label's voxels are in world (RAS) coordinates, through the parent transforms."""
    import slicer
    import vtk

    k, j, i = np.nonzero(label_array)
    local = node_matrix(volume_node) @ np.array([i.mean(), j.mean(), k.mean(), 1.0])
    to_world = vtk.vtkMatrix4x4()
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        transform.GetMatrixTransformToWorld(to_world)
    return (slicer.util.arrayFromVTKMatrix(to_world) @ local)[:3]


@pytest.mark.parametrize("kind", ["translation", "rotation"])
@pytest.mark.parametrize("target", ["new", "replace, same transform", "replace, untransformed"])
def test_label_round_trip_under_a_parent_transform(scene, kind: str, target: str) -> None:
    """A phantom under a transform: its own label imported and exported back is itself.

    Before the temporary label node was put under the volume's transform, the import applied
    the transform between the two nodes and this gave Dice 0.0.
    """
    from dkuxnet.synthetic import make_phantom

    image, label = make_phantom((32, 32, 32), seed=1)
    volume_node = bridge.add_volume_node(scene, image, "phantom")
    volume_node.SetAndObserveTransformNodeID(parent_transform(scene, kind).GetID())
    chosen = None
    if target != "new":
        chosen = bridge.new_segmentation_node(volume_node, "chosen")
        chosen.GetSegmentation().AddEmptySegment("", "Left atrium", [1.0, 0.0, 0.0])
        if target == "replace, untransformed":
            chosen.SetAndObserveTransformNodeID(None)

    seg_node = bridge.import_label(label, volume_node, segmentation_node=chosen)
    if chosen is not None:
        assert seg_node is chosen
    else:
        assert seg_node.GetTransformNodeID() == volume_node.GetTransformNodeID()
    segment_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")

    exported = bridge.export_segment(seg_node, segment_id, volume_node)
    truth = label.array > 0
    got = exported.array > 0
    dice = 2.0 * np.logical_and(got, truth).sum() / (got.sum() + truth.sum())
    assert dice == 1.0, f"Dice {dice:.3f}"
    assert exported.same_geometry(image, tol=1e-6), exported.geometry_differences(image)

    # independently of the export: the segment is where the volume's label is, in the world
    spacing = max(image.spacing)
    np.testing.assert_allclose(
        seg_node.GetSegmentCenterRAS(segment_id),
        world_centroid(volume_node, label.array),
        atol=2 * spacing,
    )


def test_import_and_export_leave_no_helper_nodes(scene) -> None:
    """No temporary label, display, storage or colour-table node stays (nor in a saved scene)."""
    import slicer

    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # the application has one
    node, _ = make_volume_node(scene)
    label = bridge.volume_from_node(node).with_array(ellipsoid_label())

    def node_ids() -> set[str]:
        return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}

    before = node_ids()
    seg_node = bridge.import_label(label, node, closed_surface=False)
    added = node_ids() - before
    assert added == {seg_node.GetID(), seg_node.GetDisplayNode().GetID()}
    segment_id = seg_node.GetSegmentation().GetNthSegmentID(0)
    for _ in range(3):
        bridge.export_segment(seg_node, segment_id, node)
    assert node_ids() - before == added
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == 0


def test_added_volume_nodes_can_be_shown(scene) -> None:
    """The self-test's phantom needs display nodes to appear in the views."""
    node, _ = make_volume_node(scene)
    shown = bridge.add_volume_node(scene, bridge.volume_from_node(node), "shown")
    assert shown.GetDisplayNode() is not None
    hidden = bridge.add_volume_node(scene, bridge.volume_from_node(node), "helper", display=False)
    assert hidden.GetDisplayNode() is None


def stored_geometry(seg_node) -> tuple[np.ndarray, list[int]]:
    """The segmentation's reference image geometry: IJK->RAS matrix (its frame) and extent."""
    text = bridge.reference_geometry(seg_node)
    values = [float(v) for v in text.split(";") if v]
    assert len(values) == 22, text
    return np.reshape(values[:16], (4, 4)), [int(v) for v in values[16:]]


@pytest.mark.parametrize("kind", ["translation", "rotation"])
@pytest.mark.parametrize("target", ["new", "replace, made by us", "replace, empty node"])
def test_reference_geometry_is_the_volumes_own_under_a_parent_transform(
    scene, kind: str, target: str
) -> None:
    """Segment Editor edits on the stored reference geometry: it must be the volume's grid.

    The segmentation sits under the volume's transform, so in its frame the grid is the
    volume's own IJK->RAS matrix. Setting the geometry before the transform stored the
    transform folded in (a 30 mm shift stored as origin + 30, i.e. + 60 in the world).
    """
    volume_node, _ = make_volume_node(scene, shape=(6, 9, 11))
    volume_node.SetAndObserveTransformNodeID(parent_transform(scene, kind).GetID())
    label = bridge.volume_from_node(volume_node).with_array(ellipsoid_label())
    chosen = None
    if target == "replace, made by us":
        chosen = bridge.new_segmentation_node(volume_node, "chosen")
    elif target == "replace, empty node":  # the selector's "Create new segmentation"
        chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
        chosen.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    seg_node = bridge.import_label(label, volume_node, chosen, closed_surface=False)
    assert seg_node.GetTransformNodeID() == volume_node.GetTransformNodeID()
    matrix, extent = stored_geometry(seg_node)
    np.testing.assert_allclose(matrix, node_matrix(volume_node), atol=1e-9)
    assert extent == [0, 10, 0, 8, 0, 5]


def test_reference_geometry_of_an_untransformed_empty_node_is_the_world_grid(scene) -> None:
    """A chosen node outside the volume's transform gets the grid as the world sees it."""
    import slicer
    import vtk

    volume_node, _ = make_volume_node(scene)
    transform = parent_transform(scene, "rotation")
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "world")
    label = bridge.volume_from_node(volume_node).with_array(ellipsoid_label())
    bridge.import_label(label, volume_node, chosen, closed_surface=False)
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    expected = slicer.util.arrayFromVTKMatrix(to_world) @ node_matrix(volume_node)
    np.testing.assert_allclose(stored_geometry(chosen)[0], expected, atol=1e-9)
