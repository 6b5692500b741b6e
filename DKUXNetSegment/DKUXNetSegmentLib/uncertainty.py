"""The uncertainty map Segment can add, and the scene's images that are not such a map.

With *Show uncertainty* the child writes ``JOB/uncertainty.nrrd`` (``--uncertainty``), which
becomes a new scalar volume on the input's exact grid, named after its measure (the ``started``
event says which: entropy for a dual model, flip variance for one network with TTA) and shown
in colour over the image. The maps are scalar volumes too, so the volume choices
(:func:`segmentable_volumes`) leave them out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import slicer

from dkuxnet.io import Volume

from . import slicer_bridge

log = logging.getLogger(__name__)

# Names of the measures that `dkuxnet predict` reports in its started event, as node names and
# the panel show them.
UNCERTAINTY_LABELS: dict[str, str] = {
    "entropy": "entropy",
    "flip-variance": "flip variance",
    "disagreement": "disagreement",
}
# Colour tables, the first the scene has: Inferno (perceptual, dark = sure, bright = unsure) in
# the Slicer application; Iron (built into MRML, also black-red-yellow) where the colour files
# are not loaded, e.g. on slicer-core.
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")
UNCERTAINTY_OPACITY = 0.5
# Voxels below this share of the map's range are transparent, so the image stays as it is
# where the model is sure (most of it) and the colour marks where it is not.
UNCERTAINTY_HIDDEN_SHARE = 0.05
# The node attribute that names a map's measure (a key of UNCERTAINTY_LABELS).
UNCERTAINTY_MEASURE_ATTRIBUTE = "DKUXNet.UncertaintyMeasure"


def uncertainty_label(measure: str | None) -> str:
    """``"flip variance"`` for ``"flip-variance"``; ``"uncertainty"`` when not known."""
    return UNCERTAINTY_LABELS.get(measure or "", measure or "uncertainty")


def uncertainty_node_name(volume_name: str, measure: str | None) -> str:
    """``"Patient 3 uncertainty (flip variance)"``."""
    return f"{volume_name} uncertainty ({uncertainty_label(measure)})"


def uncertainty_window(array: Any) -> tuple[float, float]:
    """The colour window of a map: its range, widened to a sliver when the map is constant."""
    values = np.asarray(array, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low, low + max(abs(low) * 1e-6, 1e-6))


def show_uncertainty_map(
    uncertainty: Volume, volume_node: slicer.vtkMRMLVolumeNode, measure: str | None
) -> slicer.vtkMRMLScalarVolumeNode:
    """The map as a new volume on ``volume_node``'s grid, in colour over it in the slice views.

    Named after the volume and the measure; colour table :data:`UNCERTAINTY_COLOR_NODE_IDS`,
    window = the map's range, values under :data:`UNCERTAINTY_HIDDEN_SHARE` of it transparent,
    foreground opacity :data:`UNCERTAINTY_OPACITY`, the volume itself in the background.
    """
    scene = volume_node.GetScene()
    name = uncertainty_node_name(volume_node.GetName(), measure)
    node = slicer_bridge.add_volume_on_grid_of(volume_node, uncertainty, name)
    node.SetAttribute(UNCERTAINTY_MEASURE_ATTRIBUTE, measure or "")
    low, high = uncertainty_window(uncertainty.array)
    color_node_id = slicer_bridge.first_node_id(scene, UNCERTAINTY_COLOR_NODE_IDS)
    if color_node_id is None:
        log.warning("none of the colour tables %s is loaded; grey", UNCERTAINTY_COLOR_NODE_IDS)
    slicer_bridge.set_color_display(
        node, color_node_id, (low, high), hide_below=low + UNCERTAINTY_HIDDEN_SHARE * (high - low)
    )
    slicer_bridge.show_in_slice_views(
        scene, background=volume_node, foreground=node, foreground_opacity=UNCERTAINTY_OPACITY
    )
    log.info("%s: %s, range %.4g to %.4g", node.GetName(), color_node_id, low, high)
    return node


def hide_uncertainty_maps(scene: slicer.vtkMRMLScene) -> int:
    """Take every uncertainty map out of the slice views' foreground (the nodes stay).

    A Segment without *Show uncertainty* does this, so that no map stays drawn over a volume
    it was not computed for. Returns the number of slice views changed.
    """
    maps = slicer_bridge.node_ids_with_attribute(
        scene, "vtkMRMLScalarVolumeNode", UNCERTAINTY_MEASURE_ATTRIBUTE
    )
    return slicer_bridge.remove_from_foreground(scene, maps) if maps else 0


def is_uncertainty_map(node: slicer.vtkMRMLNode) -> bool:
    """Whether ``node`` is an uncertainty map this module made (not an image to segment)."""
    return node.GetAttribute(UNCERTAINTY_MEASURE_ATTRIBUTE) is not None


def segmentable_volumes(scene: slicer.vtkMRMLScene) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """The scene's images, in scene order: what the panel's volume selectors offer.

    Scalar volumes of exactly that class (the selectors' ``showChildNodeTypes`` is false, so
    no label maps), not hidden from editors, and not an uncertainty map of this module.
    """
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    found = (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems()))
    return [
        node
        for node in found
        if node.GetClassName() == "vtkMRMLScalarVolumeNode"
        and not node.GetHideFromEditors()
        and not is_uncertainty_map(node)
    ]


def default_input_volume(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The volume Segment starts with: the scene's first image (:func:`segmentable_volumes`),
    never a label map or an uncertainty map; ``None`` when there is none."""
    volumes = segmentable_volumes(scene)
    return volumes[0] if volumes else None


def volume_selector_hidden_ids(scene: slicer.vtkMRMLScene) -> list[str]:
    """Node IDs the panel's volume selectors hide (their ``hiddenNodeIDs``): the uncertainty
    maps, which are scalar volumes too. A selector's attribute filter can only require an
    attribute, not exclude one."""
    return slicer_bridge.node_ids_with_attribute(
        scene, "vtkMRMLScalarVolumeNode", UNCERTAINTY_MEASURE_ATTRIBUTE
    )
