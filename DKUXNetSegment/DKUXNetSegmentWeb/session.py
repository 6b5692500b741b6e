"""What one web page does with the scene: load volumes, Segment, Fine-tune, save the result.

The page (``app``) turns clicks into calls here and, on a timer, calls :meth:`WebSession.poll`
and shows :meth:`WebSession.view_state`. Everything that runs the work is the Slicer module's:
:class:`DKUXNetSegmentLib.logic.DKUXNetLogic` starts the same background ``dkuxnet`` jobs,
:class:`~DKUXNetSegmentLib.logic.Parameters` keeps the choices in the same parameter node, and
:mod:`DKUXNetSegmentLib.slicer_bridge` moves volumes and labels in and out of MRML. This file
adds only what a page needs around them: files come from the :class:`DataFolder` by relative
path, a Fine-tune example is a volume file plus a label file, and the views are reached
through the small :class:`Views` protocol (trame-slicer's in the page, nothing in tests).

No trame here: the session runs on ``slicer-core`` alone, which is how the tests drive it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import slicer

from dkuxnet.errors import InputError
from dkuxnet.inference.roi import parse_ras_box
from dkuxnet.io import Volume, read_label, read_volume, strip_volume_suffix, write_volume
from dkuxnet.jobs import JobState
from dkuxnet.runs import can_resume
from DKUXNetSegmentLib import slicer_bridge
from DKUXNetSegmentLib.logic import (
    PANEL_WORDS,
    DKUXNetLogic,
    EstimateTask,
    FineTuneTask,
    LabeledPair,
    Parameters,
    SegmentTask,
    Task,
    fine_tune_model_and_device,
    resolve_model,
)

from . import charts
from .data_folder import SEGMENTATIONS, DataFolder

log = logging.getLogger(__name__)

#: The parameter node's name and module attribute, as the Slicer module's logic makes it.
MODULE_NAME = "DKUXNetSegment"

#: The markups ROI that :attr:`WebSession.roi_text` becomes (one per session, reused).
ROI_NODE_NAME = "Segment region"
#: The page's names for the options a child's error may mention (the logic's ``panel_words``).
PAGE_WORDS = {
    **PANEL_WORDS,
    "region of interest": "\nOn this page the box is the 'Region of interest' field (two "
    "opposite corners, RAS mm): type corners inside the image, or clear the field.",
}

#: Extra layers to show over a finished segmentation: each hook gets the completed task and
#: returns a volume node for the slice views' foreground, or ``None``. This is where the
#: uncertainty map plugs in: the logic makes one when Segment is started with
#: ``uncertainty=True`` (the panel's *Show uncertainty*) and keeps it as the task's
#: ``uncertainty_result``, so ``lambda task: task.uncertainty_result`` shows it; the page does
#: not ask for a map yet, and works without any hook.
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
        self.result_overlays: list[OverlayHook] = []
        self.segment_task: SegmentTask | None = None
        self.fine_tune_task: FineTuneTask | None = None
        self.estimate_task: EstimateTask | None = None
        #: the last notice for the user (an error or what just happened); the page shows it
        self.message = ""
        self.result_summary = ""
        #: Segment's region of interest as typed: "R1,A1,S1,R2,A2,S2", two opposite corners of
        #: a box in RAS mm; empty: the whole image
        self.roi_text = ""
        self._loaded: dict[str, str] = {}  # relative path -> volume node ID
        self._roi_node_id = ""

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
        """Start Segment on the loaded volume with the chosen model, device and TTA, inside the
        region of interest of :attr:`roi_text` when there is one.

        Raises:
            InputError: no volume loaded, a Segment already running, a malformed region of
                interest, or no model to use; nothing is started then.
        """
        if _running(self.segment_task):
            raise InputError("a segmentation is already running; wait for it or cancel it")
        params = self.parameters
        volume = params.input_volume
        if volume is None:
            raise InputError("load a volume first")
        params.roi = self._roi_node()
        model = resolve_model(params.model_source, params.model_path)
        self.segment_task = self.logic.start_segment(
            volume,
            model,
            device=params.device,
            tta=params.tta,
            segmentation_node=params.output_segmentation,
            roi_node=params.roi,
        )
        self.result_summary = ""
        self.message = f"Segmenting {volume.GetName()}…"
        return self.segment_task

    def _roi_node(self) -> slicer.vtkMRMLMarkupsROINode | None:
        """:attr:`roi_text` as the session's markups ROI (made once, then moved), in world RAS;
        ``None`` when the text is empty.

        The page's box is aligned to the RAS axes by design (two typed corners, no rotation);
        on an oblique scan the crop is the voxel box around it, which can be wider than the
        box. A rotated box is the Slicer panel's (its ROI's eight corners reach the child).

        Raises:
            InputError: the text is not six numbers, or the box is flat along an axis
                (:func:`parse_ras_box`).
        """
        if not self.roi_text.strip():
            return None
        corner_a, corner_b = np.asarray(parse_ras_box(self.roi_text))
        size = np.abs(corner_b - corner_a)
        node = self.scene.GetNodeByID(self._roi_node_id)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", ROI_NODE_NAME)
            self._roi_node_id = node.GetID()
        node.SetCenter(*((corner_a + corner_b) / 2).tolist())
        node.SetSize(*size.tolist())
        return node

    def cancel_segment(self) -> None:
        if (task := _active(self.segment_task)) is not None:
            task.cancel()

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

    def _segment_finished(self, task: SegmentTask) -> None:
        if task.state is JobState.FAILED:
            self.message = f"Segmentation failed: {task.error}"
            return
        if task.state is JobState.CANCELLED:
            self.message = "Segmentation cancelled."
            return
        volume, label = self._result_label(task)
        self.views.show_volume(volume)
        self.views.show_segmentation(task.result)
        for hook in self.result_overlays:
            overlay = hook(task)
            if overlay is not None:
                self.views.show_overlay(overlay)
        name = task.result.GetName() if task.result is not None else "segmentation"
        x, y, z = label.size
        voxels = int(np.count_nonzero(label.array))
        self.result_summary = (
            f"{name}: {slicer_bridge.LEFT_ATRIUM}, {voxels} voxels "
            f"on the {x} × {y} × {z} grid of {volume.GetName()}"
        )
        self.message = "Segmentation finished." + "".join(
            f" Warning: {warning}" for warning in task.warnings
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

    # ------------------------------------------------------------------ Fine-tune
    def start_fine_tune(self) -> FineTuneTask:
        """Start Fine-tune on the examples with the chosen iterations, start model and device.

        Raises:
            InputError: a Fine-tune already running, no labeled example, or no start model.
        """
        if _running(self.fine_tune_task):
            raise InputError("fine-tuning is already running; wait for it or cancel it")
        params = self.parameters
        init_model, device = fine_tune_model_and_device(params)
        task = self.logic.start_fine_tune(
            params.labeled_pairs, params.unlabeled_volumes, params.iterations, init_model, device
        )
        return self._started_fine_tune(task)

    def resume_fine_tune(self) -> FineTuneTask:
        """Continue the last cancelled or failed Fine-tune from its ``last.pt``.

        Raises:
            InputError: a Fine-tune running, or no run to resume.
        """
        if _running(self.fine_tune_task):
            raise InputError("fine-tuning is already running")
        if not self.can_resume():
            raise InputError("there is no stopped fine-tuning run to resume")
        plots = self.fine_tune_task.plots if self.fine_tune_task is not None else None
        task = self.logic.resume_fine_tune(self.parameters.fine_tune_folder, plots)
        return self._started_fine_tune(task)

    def cancel_fine_tune(self) -> None:
        """Stop after the current iteration; ``last.pt`` is kept for Resume."""
        if (task := _active(self.fine_tune_task)) is not None:
            task.cancel()

    def can_resume(self) -> bool:
        folder = self.parameters.fine_tune_folder
        finished = self.fine_tune_task is not None and self.fine_tune_task.state in (
            JobState.COMPLETED,
            JobState.RUNNING,
        )
        return bool(folder) and not finished and can_resume(Path(folder) / "run")

    def _started_fine_tune(self, task: FineTuneTask) -> FineTuneTask:
        self.fine_tune_task = task
        if (estimate := _active(self.estimate_task)) is not None:
            estimate.cancel()  # it would slow training down and measure nothing useful
        self.parameters.fine_tune_folder = str(task.job.folder)
        self.message = "Fine-tuning started."
        return task

    def estimate_time(self) -> EstimateTask:
        """Measure how long the chosen Fine-tune takes on this machine (10-60 s on a CPU)."""
        if _running(self.estimate_task):
            raise InputError("the time estimate is already running")
        init_model, device = fine_tune_model_and_device(self.parameters)
        self.estimate_task = self.logic.start_estimate(
            init_model, self.parameters.iterations, device
        )
        return self.estimate_task

    def _fine_tune_finished(self, task: FineTuneTask) -> None:
        if task.state is JobState.COMPLETED:
            self.logic.adopt_model(task, self.parameters)
            self.message = f"Fine-tuning finished; Segment now uses {task.model_path}."
        elif task.state is JobState.CANCELLED:
            self.message = "Fine-tuning cancelled; Resume continues from the last iteration."
        else:
            self.message = f"Fine-tuning failed: {task.error}"

    # ------------------------------------------------------------------ the timer
    def poll(self) -> None:
        """Read the running jobs' new events; act on the ones that just ended.

        A problem the user can fix while a job ends (e.g. its volume was removed) becomes
        :attr:`message`, like the errors of the buttons.
        """
        try:
            if (segment := _active(self.segment_task)) is not None:
                segment.poll()
                if segment.state.is_final:
                    self._segment_finished(segment)
            if (fine_tune := _active(self.fine_tune_task)) is not None:
                fine_tune.poll()
                if fine_tune.state.is_final:
                    self._fine_tune_finished(fine_tune)
        except InputError as exc:
            self.message = str(exc)
        if (estimate := _active(self.estimate_task)) is not None:
            estimate.poll()

    def view_state(self) -> dict[str, Any]:
        """Everything the page shows, as plain values (names are the page's state names)."""
        params = self.parameters
        volume = params.input_volume
        segment, fine_tune = self.segment_task, self.fine_tune_task
        state: dict[str, Any] = {
            "message": self.message,
            "volume_name": volume.GetName() if volume is not None else "",
            "model_text": self.model_text(),
            "segment_running": _running(segment),
            "segment_progress": _percent(segment),
            "segment_status": segment.describe() if segment is not None else "",
            "segment_result": self.result_summary,
            "can_save": bool(segment and segment.state is JobState.COMPLETED and segment.result),
            "labeled": [pair.describe() for pair in params.labeled_pairs],
            "unlabeled": [node.GetName() for node in params.unlabeled_volumes],
            "fine_tune_running": _running(fine_tune),
            "fine_tune_progress": _percent(fine_tune),
            "fine_tune_status": fine_tune.describe() if fine_tune is not None else "",
            "can_resume": self.can_resume() and not _running(fine_tune),
            "estimate_text": self._estimate_text(),
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
        params = self.parameters
        try:
            model = resolve_model(params.model_source, params.model_path)
        except InputError as exc:
            return f"no model: {exc}"
        if params.model_source == "default":
            return f"bundled model {model.name}"
        kind = "fine-tuned model" if params.model_source == "run" else "model"
        return f"{kind} {model}"

    def _estimate_text(self) -> str:
        task = self.estimate_task
        if _running(task):
            return "measuring…"
        if task is not None and task.state is JobState.FAILED:
            return f"Could not measure: {task.error}"
        return self.logic.estimate_text(self.parameters)


TaskT = TypeVar("TaskT", bound=Task)


def _active(task: TaskT | None) -> TaskT | None:
    """``task`` while it runs, else ``None``."""
    return task if task is not None and not task.state.is_final else None


def _running(task: Task | None) -> bool:
    return _active(task) is not None


def _percent(task: Task | None) -> int:
    if task is None or task.progress is None:
        return 0
    return int(round(100 * task.progress))
