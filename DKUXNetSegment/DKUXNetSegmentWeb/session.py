"""What one web page does with the scene: load volumes, Segment, Fine-tune, save the result.

The page (``app``) turns clicks into calls here and, on a timer, calls :meth:`WebSession.poll`
and shows :meth:`WebSession.view_state`. Everything that runs the work is the Slicer module's:
:class:`DKUXNetSegmentLib.controller.Controller` (the same one the Slicer panel renders) says
what may start, starts the background ``dkuxnet`` jobs through
:class:`DKUXNetSegmentLib.logic.DKUXNetLogic`, acts on their ends and says what to show;
:class:`~DKUXNetSegmentLib.logic.Parameters` keeps the choices in the same parameter node, and
:mod:`DKUXNetSegmentLib.slicer_bridge` moves volumes and labels in and out of MRML. This file
adds only what a page needs around them: files come from the :class:`DataFolder` by relative
path, a Fine-tune example is a volume file plus a label file, the region of interest is typed
as two corners, and the views are reached through the small :class:`Views` protocol
(trame-slicer's in the page, nothing in tests).

No trame here: the session runs on ``slicer-core`` alone, which is how the tests drive it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import slicer

from dkuxnet.errors import InputError
from dkuxnet.inference.roi import parse_ras_box
from dkuxnet.io import Volume, read_label, read_volume, strip_volume_suffix, write_volume
from dkuxnet.jobs import JobState
from DKUXNetSegmentLib import slicer_bridge
from DKUXNetSegmentLib.controller import Controller, Outcome, View
from DKUXNetSegmentLib.logic import (
    PANEL_WORDS,
    DKUXNetLogic,
    EstimateTask,
    FineTuneTask,
    LabeledPair,
    Parameters,
    RankTask,
    SegmentTask,
)
from DKUXNetSegmentLib.segment_region import (
    SEGMENT_REGION_ATTRIBUTE,
    SEGMENT_REGION_NAME,
    find_segment_region,
)

from . import charts
from .data_folder import SEGMENTATIONS, DataFolder

log = logging.getLogger(__name__)

#: The parameter node's name and module attribute, as the Slicer module's logic makes it.
MODULE_NAME = "DKUXNetSegment"

#: The markups ROI that :attr:`WebSession.roi_text` becomes: the Place box's "Segment region"
#: (one per scene, reused).
ROI_NODE_NAME = SEGMENT_REGION_NAME
#: The page's names for the options a child's error may mention (the logic's ``panel_words``).
PAGE_WORDS = {
    **PANEL_WORDS,
    "region of interest": "\nOn this page the box is the 'Region of interest' field (two "
    "opposite corners, RAS mm): type corners inside the image, or clear the field.",
}
#: What the Place box advice tells the page's user to do (the panel's: drag the box).
PAGE_PLACE_BOX_WORDS = {
    "too_large": "Click Place box: the Region of interest field gets a box around the scan's "
    "centre; change its corners to fit the heart, then click Segment again: only the inside "
    "of the box is segmented.",
    "field_of_view": "Click Place box and change the Region of interest corners to fit the "
    "heart before you segment.",
}
#: Decimals of the corners Place box writes into :attr:`WebSession.roi_text`, in mm.
ROI_TEXT_DECIMALS = 1

#: Extra layers to show over a finished segmentation: each hook gets the completed task and
#: returns a volume node for the slice views' foreground, or ``None``. The uncertainty map
#: (*Show uncertainty*) is shown without a hook.
OverlayHook = Callable[[SegmentTask], Any]


class Views(Protocol):
    """What the session asks of the page's views."""

    def show_volume(self, node: Any) -> None:
        """Show ``node`` as the slice views' background and fit the views to it."""

    def show_segmentation(self, node: Any) -> None:
        """Show a segmentation in the slice views (outline/fill) and the 3D view (surface)."""

    def show_overlay(self, node: Any) -> None:
        """Show a volume over the background in the slice views (see :data:`OverlayHook`)."""


class NoViews:
    """Views that show nothing: for tests and for running without a page."""

    def show_volume(self, node: Any) -> None:
        pass

    def show_segmentation(self, node: Any) -> None:
        pass

    def show_overlay(self, node: Any) -> None:
        pass


def new_parameter_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLScriptedModuleNode:
    """A parameter node like the one the Slicer module keeps its choices in."""
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", MODULE_NAME)
    node.SetAttribute("ModuleName", MODULE_NAME)
    return node


class WebSession:
    """The choices and running tasks of one page over one MRML scene.

    Args:
        logic: starts the jobs; its scene is the page's scene.
        data: where files are read from and results written to.
        views: the page's views (:class:`NoViews` by default).
        parameters: the parameter node; a new one in the scene by default.
    """

    def __init__(
        self,
        logic: DKUXNetLogic,
        data: DataFolder,
        views: Views | None = None,
        parameters: Parameters | None = None,
    ) -> None:
        self.logic = logic
        self.scene = logic.scene
        self.data = data
        self.views: Views = views or NoViews()
        self.parameters = parameters or Parameters(new_parameter_node(self.scene))
        self.controller = Controller(logic, lambda: self.parameters, PAGE_PLACE_BOX_WORDS)
        self.result_overlays: list[OverlayHook] = []
        #: the last notice for the user (an error or what just happened); the page shows it
        self.message = ""
        self.result_summary = ""
        self._roi_text = ""
        self._loaded: dict[str, str] = {}  # relative path -> volume node ID

    @property
    def segment_task(self) -> SegmentTask | None:
        return self.controller.segment_task

    @property
    def fine_tune_task(self) -> FineTuneTask | None:
        return self.controller.fine_tune_task

    @property
    def estimate_task(self) -> EstimateTask | None:
        return self.controller.estimate_task

    @property
    def rank_task(self) -> RankTask | None:
        return self.controller.rank_task

    # ------------------------------------------------------------------ volumes
    def load_volume(self, relative: str) -> slicer.vtkMRMLScalarVolumeNode:
        """Load a data-folder image (once; again returns the same node), make it the volume
        Segment works on and show it.

        Raises:
            InputError: a path outside the data folder, or not a readable 3D image.
        """
        node = self._volume_node(relative)
        self.parameters.input_volume = node
        self.views.show_volume(node)
        self.message = f"Loaded {node.GetName()}."
        return node

    def upload(self, name: str, content: bytes) -> slicer.vtkMRMLScalarVolumeNode:
        """Keep an uploaded image in the data folder's ``uploads/`` and load it.

        Raises:
            InputError: the upload is not a readable 3D image (the message says why).
        """
        path = self.data.save_upload(name, content)
        return self.load_volume(self.data.relative(path))

    def _volume_node(self, relative: str) -> slicer.vtkMRMLScalarVolumeNode:
        path = self.data.resolve(relative)
        key = self.data.relative(path)
        node = self.scene.GetNodeByID(self._loaded.get(key, ""))
        if node is None:
            volume = read_volume(path)
            name = self.scene.GenerateUniqueName(strip_volume_suffix(path.name))
            node = slicer_bridge.add_volume_node(self.scene, volume, name)
            self._loaded[key] = node.GetID()
            log.info("loaded %s as %r", path, node.GetName())
        return node

    # ------------------------------------------------------------------ Segment
    def segment(self) -> SegmentTask:
        """Start Segment on the loaded volume with the chosen model, device, TTA and
        uncertainty map, inside the region of interest of :attr:`roi_text` when there is one.

        Raises:
            InputError: a malformed region of interest, a Segment already running, no volume
                loaded, or no model to use; nothing is started then.
        """
        self.parameters.roi = self._roi_node()
        task = self.controller.segment()
        self.result_summary = ""
        self.message = f"Segmenting {task.job.config['volume']}…"
        return task

    @property
    def roi_text(self) -> str:
        """Segment's region of interest as typed: "R1,A1,S1,R2,A2,S2", two opposite corners of
        a box in RAS mm; empty: the whole image.

        Setting it moves the box at once when the text is a box (so that the advice knows a
        box is chosen); a text that is not one is reported by :meth:`segment`.
        """
        return self._roi_text

    @roi_text.setter
    def roi_text(self, text: str) -> None:
        self._roi_text = text
        with contextlib.suppress(InputError):  # half-typed or wrong: Segment will say why
            self.parameters.roi = self._roi_node()

    def _roi_node(self) -> slicer.vtkMRMLMarkupsROINode | None:
        """:attr:`roi_text` as the scene's "Segment region" ROI (made once, then moved), in
        world RAS; ``None`` when the text is empty.

        The page's box is aligned to the RAS axes by design (two typed corners, no rotation);
        on an oblique scan the crop is the voxel box around it, which can be wider than the
        box. A rotated box is the Slicer panel's (its ROI's eight corners reach the child).

        Raises:
            InputError: the text is not six numbers, or the box is flat along an axis
                (:func:`parse_ras_box`).
        """
        if not self._roi_text.strip():
            return None
        corner_a, corner_b = np.asarray(parse_ras_box(self._roi_text))
        size = np.abs(corner_b - corner_a)
        node = find_segment_region(self.scene)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", ROI_NODE_NAME)
            node.SetAttribute(SEGMENT_REGION_ATTRIBUTE, "1")
        node.SetCenter(*((corner_a + corner_b) / 2).tolist())
        node.SetSize(*size.tolist())
        return node

    def place_box(self) -> str:
        """Place box: a training crop's box at the scan's centre, clipped to the scan, as the
        :attr:`roi_text` to edit; returns that text.

        Raises:
            InputError: no volume loaded.
        """
        roi = self.controller.place_segment_region()
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)  # a new box is aligned to the RAS axes
        corners = [*bounds[0::2], *bounds[1::2]]
        self.roi_text = ",".join(f"{value:.{ROI_TEXT_DECIMALS}f}" for value in corners)
        self.message = "Placed a box around the scan's centre: fit its corners to the heart."
        return self.roi_text

    def cancel_segment(self) -> None:
        self.controller.cancel_segment()

    def save_segmentation(self) -> str:
        """Write the last segmentation as a 0/1 label map on its volume's grid under
        ``segmentations/``; returns its path relative to the data folder.

        Raises:
            InputError: there is no finished segmentation (or its volume is gone).
        """
        task = self.segment_task
        if task is None or task.state is not JobState.COMPLETED:
            raise InputError("there is no finished segmentation to save")
        volume, label = self._result_label(task)
        path = self.data.new_path(SEGMENTATIONS, f"{volume.GetName()}_segmentation.nrrd")
        write_volume(label, path)
        relative = self.data.relative(path)
        self.message = f"Saved {relative} in the data folder."
        return relative

    def _result_label(self, task: SegmentTask) -> tuple[Any, Volume]:
        """The segmented volume node and the result's left atrium as a label on its grid."""
        volume = self.scene.GetNodeByID(task.volume_node_id)
        segmentation = task.result
        if volume is None or segmentation is None or segmentation.GetScene() is None:
            raise InputError("the segmented volume or its segmentation is no longer loaded")
        segment_id = (
            segmentation.GetSegmentation().GetSegmentIdBySegmentName(slicer_bridge.LEFT_ATRIUM)
            or slicer_bridge.segment_ids(segmentation)[0]
        )
        return volume, slicer_bridge.export_segment(segmentation, segment_id, volume)

    def _show_segmentation(self, task: SegmentTask) -> None:
        """A completed Segment: the volume, its result and overlays in the views, a summary."""
        volume, label = self._result_label(task)
        self.views.show_volume(volume)
        self.views.show_segmentation(task.result)
        overlays = [task.uncertainty_result] + [hook(task) for hook in self.result_overlays]
        for overlay in overlays:
            if overlay is not None:
                self.views.show_overlay(overlay)
        name = task.result.GetName() if task.result is not None else "segmentation"
        x, y, z = label.size
        voxels = int(np.count_nonzero(label.array))
        self.result_summary = (
            f"{name}: {slicer_bridge.LEFT_ATRIUM}, {voxels} voxels "
            f"on the {x} × {y} × {z} grid of {volume.GetName()}"
        )

    # ------------------------------------------------------------------ Fine-tune examples
    def add_labeled(self, volume_relative: str, label_relative: str) -> LabeledPair:
        """Add a Fine-tune example: a data-folder image and its label map (0/1, same grid).

        The label becomes a hidden segmentation of the volume, as a labeled pair is in the
        Slicer module.

        Raises:
            InputError: a path outside the data folder, an unreadable file, or a label that is
                not a 0/1 map with foreground on the volume's grid.
        """
        volume_node = self._volume_node(volume_relative)
        label_path = self.data.resolve(label_relative)
        label = read_label(
            label_path,
            reference=slicer_bridge.volume_from_node(volume_node),
            reference_name=volume_relative,
        )
        segmentation = slicer_bridge.import_label(label, volume_node, closed_surface=False)
        segmentation.SetName(
            self.scene.GenerateUniqueName(f"{strip_volume_suffix(label_path.name)} label")
        )
        segmentation.GetDisplayNode().SetVisibility(False)  # training data, not a result
        pair = LabeledPair(volume_node, segmentation, slicer_bridge.segment_ids(segmentation)[0])
        self.parameters.labeled_pairs = [*self.parameters.labeled_pairs, pair]
        self.message = f"Added {pair.describe()}."
        return pair

    def add_unlabeled(self, relative: str) -> slicer.vtkMRMLScalarVolumeNode:
        """Add a data-folder image to the unlabeled volumes of Fine-tune (once)."""
        node = self._volume_node(relative)
        volumes = self.parameters.unlabeled_volumes
        if node not in volumes:
            self.parameters.unlabeled_volumes = [*volumes, node]
        self.message = f"Added {node.GetName()} (unlabeled)."
        return node

    def remove_labeled(self, index: int) -> None:
        pairs = self.parameters.labeled_pairs
        if 0 <= index < len(pairs):
            del pairs[index]
            self.parameters.labeled_pairs = pairs

    def remove_unlabeled(self, index: int) -> None:
        volumes = self.parameters.unlabeled_volumes
        if 0 <= index < len(volumes):
            del volumes[index]
            self.parameters.unlabeled_volumes = volumes

    # ------------------------------------------------------------------ Suggest next to label
    def suggest_next(self) -> RankTask:
        """Rank the unlabeled volumes by the model's uncertainty, most unsure first."""
        task = self.controller.suggest_next()
        self.message = "Ranking the unlabeled volumes…"
        return task

    def cancel_suggest_next(self) -> None:
        self.controller.cancel_suggest_next()

    def show_ranked(self, row: int) -> None:
        """Show the volume of row ``row`` of the ranking in the views."""
        node = self.controller.ranked_volume(row)
        if node is not None:
            self.views.show_volume(node)

    # ------------------------------------------------------------------ Fine-tune
    def start_fine_tune(self) -> FineTuneTask:
        """Start Fine-tune on the examples with the chosen iterations, start model and device.

        Raises:
            InputError: a Fine-tune already running, no labeled example, or no start model.
        """
        task = self.controller.start_fine_tune()
        self.message = "Fine-tuning started."
        return task

    def resume_fine_tune(self) -> FineTuneTask:
        """Continue the last cancelled or failed Fine-tune from its ``last.pt``.

        Raises:
            InputError: a Fine-tune running, or no run to resume.
        """
        task = self.controller.resume_fine_tune()
        self.message = "Fine-tuning started."
        return task

    def cancel_fine_tune(self) -> None:
        """Stop after the current iteration; ``last.pt`` is kept for Resume."""
        self.controller.cancel_fine_tune()

    def estimate_time(self) -> EstimateTask:
        """Measure how long the chosen Fine-tune takes on this machine (10-60 s on a CPU)."""
        return self.controller.estimate_time()

    # ------------------------------------------------------------------ the timer
    def poll(self) -> None:
        """Read the running jobs' new events; say what the ones that just ended did.

        A problem the user can fix while a job ends (e.g. its volume was removed) becomes
        :attr:`message`, like the errors of the buttons.
        """
        for outcome in self.controller.poll():
            self._announce(outcome)

    def _announce(self, outcome: Outcome) -> None:
        self.message = outcome.message
        task = outcome.task
        if outcome.action == "segment" and task.state is JobState.COMPLETED:
            assert isinstance(task, SegmentTask)
            try:
                self._show_segmentation(task)
            except InputError as exc:
                self.message = str(exc)

    def view_state(self) -> dict[str, Any]:
        """Everything the page shows, as plain values (names are the page's state names).

        What may start is the controller view's ``can_*`` fields under their own names
        (``can_segment``, ``can_fine_tune``, ``can_estimate``, ...), the values the Slicer
        panel enables its buttons by; the page enables its buttons by them and derives none.
        """
        params = self.parameters
        volume = params.input_volume
        view: View = self.controller.view()
        segment = self.segment_task
        fine_tune = self.fine_tune_task
        state: dict[str, Any] = {
            "message": self.message,
            "volume_name": volume.GetName() if volume is not None else "",
            "model_text": view.model_text,
            "segment_running": view.segment.running,
            "segment_progress": view.segment.progress,
            "segment_status": view.segment.status,
            "segment_result": self.result_summary,
            "can_save": bool(segment and segment.state is JobState.COMPLETED and segment.result),
            "region_advice": view.region_advice,
            "labeled": [pair.describe() for pair in params.labeled_pairs],
            "unlabeled": [node.GetName() for node in params.unlabeled_volumes],
            "rank_running": view.ranking.running,
            "rank_status": view.ranking.status,
            "ranking": [f"{r.rank}. {r.name}: {r.score_text}" for r in view.ranked],
            "fine_tune_running": view.fine_tune.running,
            "fine_tune_progress": view.fine_tune.progress,
            "fine_tune_status": view.fine_tune.status,
            "estimate_text": view.estimate_text,
            **{
                field.name: getattr(view, field.name)
                for field in dataclasses.fields(view)
                if field.name.startswith("can_")
            },
        }
        plots = fine_tune.plots if fine_tune is not None else None
        state["loss_chart"] = charts.line_chart(
            plots.loss_curves() if plots else {}, "Loss", "loss"
        )
        state["dice_chart"] = charts.line_chart(
            plots.dice_curves() if plots else {}, "Validation Dice", "mean Dice", y_range=(0, 1)
        )
        return state

    def model_text(self) -> str:
        """The model Segment uses, for the page."""
        return self.controller.model_text()
