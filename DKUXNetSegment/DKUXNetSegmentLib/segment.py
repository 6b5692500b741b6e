"""Segment: ``dkuxnet predict`` on one volume, its label imported as a segmentation.

The chosen volume is exported to ``JOB/input.nrrd``; ``dkuxnet predict`` writes
``JOB/prediction.nrrd`` and progress events; when it ends well the label is imported as a new
segmentation (or into the one the user chose to replace) by :mod:`.slicer_bridge`. With *Show
uncertainty* it also writes ``JOB/uncertainty.nrrd`` (:mod:`.uncertainty`). With a *Region of
interest* (a markups ROI box around the heart) only the inside is predicted (``--roi``, the
box's eight corners in the volume's own RAS frame, so a rotated box on an oblique scan is
cropped tightly); the label keeps the input's grid and is 0 outside. ``warning`` events (e.g. a
left atrium far larger than any in the training data: the scan shows more than the heart) are
collected in :attr:`SegmentTask.warnings` and added to the status.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import slicer

from dkuxnet.errors import InputError
from dkuxnet.events import EVENTS_FILE
from dkuxnet.io import read_volume, write_volume
from dkuxnet.jobs import Job, JobState

from . import slicer_bridge
from .tasks import (
    PANEL_WORDS,
    PREDICT_CANCEL_GRACE_S,
    Launcher,
    Task,
    check_device,
    with_panel_words,
)
from .uncertainty import hide_uncertainty_maps, show_uncertainty_map

log = logging.getLogger(__name__)

# predict: share of the progress bar taken by each stage, in order
PREDICT_STAGES: dict[str, tuple[float, float]] = {
    "reading": (0.0, 0.05),
    "predicting": (0.05, 0.95),
    "writing": (0.95, 1.0),
}
# Decimals of the region of interest's corners on the command line, in mm (0.1 µm: far below
# any voxel).
ROI_DECIMALS = 4


def start_segment(
    launcher: Launcher,
    volume_node: slicer.vtkMRMLVolumeNode,
    model: str | Path,
    device: str = "auto",
    tta: bool = False,
    segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
    keep_folder: bool = False,
    uncertainty: bool = False,
    roi_node: slicer.vtkMRMLMarkupsROINode | None = None,
) -> SegmentTask:
    """Export the volume and start ``dkuxnet predict`` on it; returns the running task.

    ``segmentation_node=None`` makes a new segmentation; a node is replaced (its
    left-atrium segment), which only happens when the user chose it. ``uncertainty``
    also writes the uncertainty map (the measure ``auto`` stands for: entropy for a dual
    model, flip variance for one network with ``tta``; one network without ``tta`` is
    refused by the child) and shows it as a new volume over the input. ``roi_node``
    limits the prediction to the tightest voxel box around that ROI's eight corners, taken
    in the volume's own frame (:func:`slicer_bridge.roi_corners_in_volume_frame`); the
    child refuses a box that misses the image.

    Raises:
        InputError: a bad device, or an ROI that cannot be used (not placed, under a
            non-linear transform); nothing is started then.
    """
    check_device(device)
    roi_corners = (
        slicer_bridge.roi_corners_in_volume_frame(roi_node, volume_node)
        if roi_node is not None
        else None
    )
    folder = launcher.new_folder("segment")
    input_path = folder / "input.nrrd"
    write_volume(slicer_bridge.volume_from_node(volume_node), input_path)
    output_path = folder / "prediction.nrrd"
    uncertainty_path = folder / "uncertainty.nrrd" if uncertainty else None
    args = ["predict", "--model", str(model), "--input", str(input_path)]
    args += ["--output", str(output_path), "--device", device, "--events"]
    args += [str(folder / EVENTS_FILE)] + (["--tta"] if tta else [])
    if uncertainty_path is not None:
        args += ["--uncertainty", str(uncertainty_path)]
    config: dict[str, Any] = {
        "task": "segment",
        "volume": volume_node.GetName(),
        "model": str(model),
    }
    if roi_node is not None and roi_corners is not None:
        # The eight corners, so that the child crops the tightest voxel box around a rotated
        # ROI. One argument with "=": a value that starts with "-" would read as an option.
        args.append("--roi=" + ",".join(f"{v:.{ROI_DECIMALS}f}" for v in roi_corners.flat))
        low, high = roi_corners.min(axis=0), roi_corners.max(axis=0)
        config["roi"] = {
            "node": roi_node.GetName(),
            "bounds_ras": [*low.tolist(), *high.tolist()],
            "corners_ras": roi_corners.tolist(),
        }
    job = launcher.start(folder, args, config=config)
    return SegmentTask(
        job,
        volume_node,
        output_path,
        segmentation_node,
        keep_folder,
        uncertainty_path,
        launcher.panel_words,
    )


class SegmentTask(Task):
    """``dkuxnet predict`` on one volume; the result becomes a segmentation node.

    With ``uncertainty_path`` the child also writes the uncertainty map there; it becomes
    :attr:`uncertainty_result`, a scalar volume named after :attr:`uncertainty_measure`.
    The child's ``warning`` events (a result that looks implausible) are kept, in order, in
    :attr:`warnings` for the front end to show; a completed task also lists them in its status.
    """

    def __init__(
        self,
        job: Job,
        volume_node: slicer.vtkMRMLVolumeNode,
        output_path: Path,
        segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
        keep_folder: bool = False,
        uncertainty_path: Path | None = None,
        panel_words: Mapping[str, str] = PANEL_WORDS,
    ) -> None:
        super().__init__(job)
        self.panel_words = panel_words
        self.scene = volume_node.GetScene()
        self.volume_node_id = volume_node.GetID()
        self.segmentation_node_id = segmentation_node.GetID() if segmentation_node else None
        self.output_path = output_path
        self.keep_folder = keep_folder
        self.uncertainty_path = uncertainty_path
        self.uncertainty_measure: str | None = None
        self.warnings: list[str] = []
        # what each warning's volume check found ("too_large", "empty", ...; the event's check)
        self.checks: list[str] = []
        self.result: slicer.vtkMRMLSegmentationNode | None = None
        self.uncertainty_result: slicer.vtkMRMLScalarVolumeNode | None = None

    def cancel(self, grace_s: float = PREDICT_CANCEL_GRACE_S) -> None:
        super().cancel(grace_s)

    def _on_end(self) -> None:
        super()._on_end()
        if self.job.state is JobState.FAILED and self.error:
            self.error = with_panel_words(self.error, self.panel_words)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "progress":
            stage = str(event.get("stage", ""))
            done, total = event.get("done"), event.get("total")
            low, high = PREDICT_STAGES.get(stage, (self.progress or 0.0, self.progress or 0.0))
            fraction = done / total if isinstance(done, int | float) and total else 0.0
            self.progress = low + (high - low) * min(max(fraction, 0.0), 1.0)
            self.status = f"{stage} {done}/{total}" if total else stage
        elif kind == "started":
            self.progress = 0.0
            self.status = f"started on {event.get('device', '?')}"
            self.uncertainty_measure = event.get("uncertainty") or self.uncertainty_measure
        elif kind == "warning":
            message = str(event.get("message") or "the model reported an unnamed warning")
            self.warnings.append(message)
            if event.get("check"):
                self.checks.append(str(event["check"]))
            log.warning("segmenting %s: %s", event.get("case", "?"), message)

    def _on_success(self) -> None:
        volume_node = self.scene.GetNodeByID(self.volume_node_id)
        if volume_node is None:
            raise InputError("the input volume was removed from the scene while segmenting")
        target = (
            self.scene.GetNodeByID(self.segmentation_node_id) if self.segmentation_node_id else None
        )
        label = read_volume(self.output_path, what="prediction")
        self.result = slicer_bridge.import_label(label, volume_node, segmentation_node=target)
        if self.uncertainty_path is not None:
            uncertainty = read_volume(self.uncertainty_path, what="uncertainty map")
            self.uncertainty_result = show_uncertainty_map(
                uncertainty, volume_node, self.uncertainty_measure
            )
        else:
            hide_uncertainty_maps(self.scene)
        super()._on_success()
        if self.uncertainty_result is not None:
            self.status += f"; uncertainty: {self.uncertainty_result.GetName()}"
        self.status += "".join(f"; warning: {message}" for message in self.warnings)
        if not self.keep_folder:
            shutil.rmtree(self.job.folder, ignore_errors=True)
