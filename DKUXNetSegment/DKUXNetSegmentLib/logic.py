"""The logic of the DKUXNetSegment module: Segment and Fine-tune as background jobs.

Nothing here imports qt or needs ``slicer.app``: the widget (``DKUXNetSegment.py``) calls
:class:`DKUXNetLogic` and polls the returned task from a timer; the test suite does the same on
the ``slicer-core`` package with a real child process.

Flow of a task:

* **Segment**: the chosen volume is exported to ``JOB/input.nrrd``; ``dkuxnet predict`` writes
  ``JOB/prediction.nrrd`` and progress events; when it ends well the label is imported as a new
  segmentation (or into the one the user chose to replace) by :mod:`slicer_bridge`. With
  *Show uncertainty* it also writes ``JOB/uncertainty.nrrd`` (``--uncertainty``), which becomes
  a new scalar volume on the input's exact grid, named after its measure (the ``started``
  event says which: entropy for a dual model, flip variance for one network with TTA) and
  shown in colour over the image. With a *Region of interest* (a markups ROI box around the
  heart) only the inside is predicted (``--roi``, the box's eight corners in the volume's own
  RAS frame, so a rotated box on an oblique scan is cropped tightly); the
  label keeps the input's grid and is 0 outside. ``warning`` events (e.g. a left atrium far
  larger than any in the training data: the scan shows more than the heart) are collected in
  :attr:`SegmentTask.warnings` and added to the status.
* **Suggest next to label**: the Fine-tune panel's unlabeled volumes are exported to
  ``JOB/scans/``; ``dkuxnet rank`` scores each by the current model's mean uncertainty over its
  predicted foreground and border and writes ``JOB/ranking.csv``; the rows, mapped back to the
  volume nodes, fill one table node (most uncertain first).
* **Estimate time**: ``dkuxnet estimate`` times a few real iterations of the training recipe
  Fine-tune would run (same start model, device and settings) and prints one JSON line; the
  seconds per iteration are kept per (model, device), so a new iteration count needs no new
  measurement.
* **Fine-tune**: every labeled pair (volume + segmentation + segment) and unlabeled volume is
  exported under ``JOB/data/`` with a MONAI-style ``JOB/datalist.json``; ``dkuxnet train``
  writes ``JOB/run/`` (events, ``best.pt``, ``last.pt``). Iteration and validation events are
  appended to MRML table nodes, which plot chart nodes draw. A cancelled run can be resumed.

Progress, ETA and status come from event fields, never from parsing text.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import InputError
from dkuxnet.events import EVENTS_FILE, read_events
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.jobs import Job, JobState, dkuxnet_command
from dkuxnet.reports import format_clock, format_duration
from dkuxnet.resources import default_model_path
from dkuxnet.runs import STOP_REQUEST_FILE, can_resume, model_checkpoint

from . import slicer_bridge

log = logging.getLogger(__name__)

CommandFactory = Callable[[Sequence[str]], list[str]]

MODEL_SOURCES = ("default", "run", "file")
# What the child processes import; the versions are the ones the extension is tested with.
REQUIRED_PACKAGES: dict[str, str] = {
    "torch": "torch>=2.2",
    "monai": "monai==1.6.1",
    "SimpleITK": "SimpleITK==2.5.7",
}
# predict: share of the progress bar taken by each stage, in order
PREDICT_STAGES: dict[str, tuple[float, float]] = {
    "reading": (0.0, 0.05),
    "predicting": (0.05, 0.95),
    "writing": (0.95, 1.0),
}
# Fine-tune length unless the user changes it. A fine-tune from a model runs in pseudo mode
# (dkuxnet.run_config.FINE_TUNE_MODE): one network, about the cost of a supervised iteration
# (1.0 s on a 2-core bf16 CPU, 2.5-4 s on one without bf16), after the start model has labelled
# the unlabeled scans once; the paper's dual mode took 3.4 s on the bf16 CPU. Estimate time
# measures the user's own machine. Also the value of iterationsSpinBox in the .ui file.
DEFAULT_FINE_TUNE_ITERATIONS = 250
CANCEL_GRACE_S = 30.0
# Prediction has nothing to save; where the polite signal cannot arrive (Windows), Cancel
# should not make the user wait long for the kill.
PREDICT_CANCEL_GRACE_S = 5.0
# The uncertainty map (Segment with "Show uncertainty"). Names of the measures that
# `dkuxnet predict` reports in its started event, as node names and the panel show them.
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
RANKING_TABLE_NAME = "DKUXNet next to label"
# Decimals of the region of interest's corners on the command line, in mm (0.1 µm: far below
# any voxel).
ROI_DECIMALS = 4
# Added to the child's region-of-interest errors: its coordinates are in the volume's own frame,
# which is not what the views show for a volume under a transform.
ROI_PANEL_WORDS = (
    "\nIn this panel the box is the 'Region of interest' ROI, given to the model in the "
    "volume's own coordinates (before any parent transform): place it over the heart in the "
    "volume, or choose no region of interest."
)
# A child's message that mentions a key gets its text: the option as the panel names it. A
# front end with other controls (the web page) gives the logic its own words.
PANEL_WORDS: Mapping[str, str] = {
    "--tta": "\nIn this panel, --tta is the 'Test-time augmentation' check box.",
    "region of interest": ROI_PANEL_WORDS,
}


# ---------------------------------------------------------------------------------- helpers
def missing_packages(required: Iterable[str] = REQUIRED_PACKAGES) -> list[str]:
    """The import names of required packages that this Python cannot find."""
    return [name for name in required if importlib.util.find_spec(name) is None]


def resolve_model(source: str, path: str | Path | None = None) -> Path:
    """The checkpoint to use for a model choice of the GUI.

    Args:
        source: ``"default"`` (the bundled model), ``"run"`` (a training run folder: its
            ``best.pt``, else ``last.pt``) or ``"file"`` (a ``.pt`` file).
        path: the run folder or file; ignored for ``"default"``.

    Raises:
        InputError: with a message for the user when the choice does not lead to a file.
    """
    if source == "default":
        model = default_model_path()
        if model is None:
            raise InputError("this installation has no bundled model; choose a run folder or file")
        return model
    if source not in MODEL_SOURCES:
        raise InputError(f"unknown model source {source!r}; use one of {MODEL_SOURCES}")
    if not path:
        raise InputError("choose a model run folder or .pt file")
    path = Path(path)
    if source == "run":
        if (found := model_checkpoint(path)) is not None:
            return found
        raise InputError(f"{path} holds no best.pt or last.pt; is it a training run folder?")
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    return path


def fine_tune_model_and_device(params: Parameters) -> tuple[Path | None, str]:
    """The checkpoint Fine-tune starts from (``None``: a new model) and its device.

    Start fine-tuning and Estimate time both take them from here, so the estimate measures the
    run that Start would begin.

    Raises:
        InputError: when the current model choice does not lead to a file.
    """
    init_model = (
        resolve_model(params.model_source, params.model_path)
        if params.start_from_current_model
        else None
    )
    return init_model, params.device


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


def _new_job_folder(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{stamp}-", dir=parent))


# ---------------------------------------------------------------------------------- parameters
class Parameters:
    """Typed access to the module's parameter node (a ``vtkMRMLScriptedModuleNode``).

    All GUI state lives here, so saving and reloading the scene keeps the user's choices.
    Node choices are node references (MRML keeps them right when a scene is loaded or a node
    deleted); a list of single nodes uses the n-th references of one role.
    """

    def __init__(self, node: slicer.vtkMRMLScriptedModuleNode) -> None:
        self.node = node

    # plain values
    def _get(self, name: str, default: str) -> str:
        value = self.node.GetParameter(name)
        return value if value else default

    def _set(self, name: str, value: Any) -> None:
        self.node.SetParameter(name, str(value))

    @property
    def model_source(self) -> str:
        return self._get("ModelSource", "default")

    @model_source.setter
    def model_source(self, value: str) -> None:
        if value not in MODEL_SOURCES:
            raise ValueError(f"model source must be one of {MODEL_SOURCES}, got {value!r}")
        self._set("ModelSource", value)

    @property
    def model_path(self) -> str:
        return self._get("ModelPath", "")

    @model_path.setter
    def model_path(self, value: str | Path) -> None:
        self._set("ModelPath", value)

    @property
    def device(self) -> str:
        return self._get("Device", "auto")

    @device.setter
    def device(self, value: str) -> None:
        if value not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {value!r}")
        self._set("Device", value)

    @property
    def tta(self) -> bool:
        return self._get("TTA", "false") == "true"

    @tta.setter
    def tta(self, value: bool) -> None:
        self._set("TTA", "true" if value else "false")

    @property
    def show_uncertainty(self) -> bool:
        """Segment also computes and shows the uncertainty map (off by default)."""
        return self._get("ShowUncertainty", "false") == "true"

    @show_uncertainty.setter
    def show_uncertainty(self, value: bool) -> None:
        self._set("ShowUncertainty", "true" if value else "false")

    @property
    def iterations(self) -> int:
        return int(self._get("Iterations", str(DEFAULT_FINE_TUNE_ITERATIONS)))

    @iterations.setter
    def iterations(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError("iterations must be at least 1")
        self._set("Iterations", int(value))

    @property
    def start_from_current_model(self) -> bool:
        return self._get("StartFromCurrentModel", "true") == "true"

    @start_from_current_model.setter
    def start_from_current_model(self, value: bool) -> None:
        self._set("StartFromCurrentModel", "true" if value else "false")

    @property
    def fine_tune_folder(self) -> str:
        """The job folder of the last fine-tuning run (what Resume continues)."""
        return self._get("FineTuneFolder", "")

    @fine_tune_folder.setter
    def fine_tune_folder(self, value: str | Path) -> None:
        self._set("FineTuneFolder", value)

    # nodes
    @property
    def input_volume(self) -> slicer.vtkMRMLScalarVolumeNode | None:
        return self.node.GetNodeReference("InputVolume")

    @input_volume.setter
    def input_volume(self, node: slicer.vtkMRMLNode | None) -> None:
        self.node.SetNodeReferenceID("InputVolume", node.GetID() if node else None)

    @property
    def roi(self) -> slicer.vtkMRMLMarkupsROINode | None:
        """``None``: segment the whole volume; a markups ROI: only the box around the heart."""
        return self.node.GetNodeReference("RegionOfInterest")

    @roi.setter
    def roi(self, node: slicer.vtkMRMLNode | None) -> None:
        self.node.SetNodeReferenceID("RegionOfInterest", node.GetID() if node else None)

    @property
    def output_segmentation(self) -> slicer.vtkMRMLSegmentationNode | None:
        """``None``: create a new segmentation; a node: replace its left-atrium segment."""
        return self.node.GetNodeReference("OutputSegmentation")

    @output_segmentation.setter
    def output_segmentation(self, node: slicer.vtkMRMLNode | None) -> None:
        self.node.SetNodeReferenceID("OutputSegmentation", node.GetID() if node else None)

    @property
    def labeled_pairs(self) -> list[LabeledPair]:
        """The fine-tuning examples, each kept whole.

        Pair ``i`` has its own reference roles (``LabeledPair{i}Volume``,
        ``LabeledPair{i}Segmentation``) and parameter (``LabeledPair{i}SegmentId``). When a node
        is deleted, MRML drops the references to it; with one list per role that shifted the
        lists against each other and paired volumes with the wrong segmentations. Here the
        pair that lost a node is left out, and no other pair changes.
        """
        pairs = []
        for i in range(int(self._get("LabeledPairCount", "0"))):
            volume = self.node.GetNodeReference(_pair_role(i, "Volume"))
            segmentation = self.node.GetNodeReference(_pair_role(i, "Segmentation"))
            segment_id = self.node.GetParameter(_pair_role(i, "SegmentId"))
            if volume is not None and segmentation is not None and segment_id:
                pairs.append(LabeledPair(volume, segmentation, segment_id))
        return pairs

    @labeled_pairs.setter
    def labeled_pairs(self, pairs: Sequence[LabeledPair]) -> None:
        was_modifying = self.node.StartModify()
        for i in range(int(self._get("LabeledPairCount", "0"))):
            self.node.RemoveNodeReferenceIDs(_pair_role(i, "Volume"))
            self.node.RemoveNodeReferenceIDs(_pair_role(i, "Segmentation"))
            self.node.UnsetParameter(_pair_role(i, "SegmentId"))
        for i, pair in enumerate(pairs):
            self.node.SetNodeReferenceID(_pair_role(i, "Volume"), pair.volume.GetID())
            self.node.SetNodeReferenceID(_pair_role(i, "Segmentation"), pair.segmentation.GetID())
            self.node.SetParameter(_pair_role(i, "SegmentId"), pair.segment_id)
        self._set("LabeledPairCount", len(pairs))
        self.node.EndModify(was_modifying)

    def convert_legacy_pairs(self) -> str | None:
        """Read pairs saved by an earlier version (three parallel lists) into the per-pair form.

        That version kept the volumes and the segmentations as n-th references of the roles
        :data:`LEGACY_PAIR_ROLES` and the segment IDs as a JSON list in
        :data:`LEGACY_SEGMENT_IDS`. Lists of one length pair up as they were saved and are
        added to the current pairs; lists of different lengths were shifted by a node deleted
        before saving, so no pairing can be trusted: they are dropped, and the message says so.
        The old keys are removed either way.

        Returns:
            ``None`` when there was nothing to read or all of it was read; else the message to
            show the user.
        """
        node = self.node
        volumes, segmentations = (_nth_references(node, role) for role in LEGACY_PAIR_ROLES)
        text = node.GetParameter(LEGACY_SEGMENT_IDS)
        if not volumes and not segmentations and not text:
            return None
        try:
            segment_ids = json.loads(text) if text else []
        except ValueError:
            segment_ids = None
        was_modifying = node.StartModify()
        for role in LEGACY_PAIR_ROLES:
            node.RemoveNodeReferenceIDs(role)
        node.UnsetParameter(LEGACY_SEGMENT_IDS)
        node.EndModify(was_modifying)
        if (
            not isinstance(segment_ids, list)
            or not all(isinstance(i, str) for i in segment_ids)
            or not len(volumes) == len(segmentations) == len(segment_ids)
        ):
            count = len(segment_ids) if isinstance(segment_ids, list) else "unreadable"
            message = (
                "The fine-tuning examples saved in this scene by an earlier version of DKUXNet "
                f"Segment cannot be paired up ({len(volumes)} volumes, {len(segmentations)} "
                f"segmentations, {count} segment IDs: a node deleted before saving shifted "
                "the lists). They were left out; add the labeled volumes again under Fine-tune."
            )
            log.warning("%s", message)
            return message
        found = [
            LabeledPair(volume, segmentation, segment_id)
            for volume, segmentation, segment_id in zip(
                volumes, segmentations, segment_ids, strict=True
            )
            if volume is not None and segmentation is not None and segment_id
        ]
        self.labeled_pairs = [*self.labeled_pairs, *found]
        log.info("read %d fine-tuning pair(s) saved in the earlier format", len(found))
        if len(found) < len(volumes):
            return (
                f"{len(volumes) - len(found)} of the {len(volumes)} fine-tuning examples saved "
                "in this scene by an earlier version name a node the scene no longer has; "
                "they were left out."
            )
        return None

    @property
    def unlabeled_volumes(self) -> list[slicer.vtkMRMLScalarVolumeNode]:
        return [n for n in _nth_references(self.node, "UnlabeledVolume") if n is not None]

    @unlabeled_volumes.setter
    def unlabeled_volumes(self, nodes: Sequence[slicer.vtkMRMLNode]) -> None:
        _set_nth_references(self.node, "UnlabeledVolume", list(nodes))


#: The earlier pair format (before each pair had its own roles): n-th references of these
#: roles and a JSON list of segment IDs (:meth:`Parameters.convert_legacy_pairs`).
LEGACY_PAIR_ROLES = ("LabeledVolume", "LabeledSegmentation")
LEGACY_SEGMENT_IDS = "LabeledSegmentIds"


def _pair_role(index: int, part: str) -> str:
    return f"LabeledPair{index}{part}"


def _nth_references(node: slicer.vtkMRMLNode, role: str) -> list[Any]:
    return [node.GetNthNodeReference(role, i) for i in range(node.GetNumberOfNodeReferences(role))]


def _set_nth_references(node: slicer.vtkMRMLNode, role: str, nodes: Sequence[Any]) -> None:
    node.RemoveNodeReferenceIDs(role)
    for i, target in enumerate(nodes):
        node.SetNthNodeReferenceID(role, i, target.GetID())


@dataclasses.dataclass(frozen=True)
class LabeledPair:
    """One fine-tuning example: a volume and the segment that labels it."""

    volume: Any  # vtkMRMLScalarVolumeNode
    segmentation: Any  # vtkMRMLSegmentationNode
    segment_id: str

    def describe(self) -> str:
        segment = self.segmentation.GetSegmentation().GetSegment(self.segment_id)
        name = segment.GetName() if segment is not None else self.segment_id
        return f"{self.volume.GetName()} / {self.segmentation.GetName()} / {name}"


# ---------------------------------------------------------------------------------- tasks
class Task:
    """A running Segment or Fine-tune job as the GUI sees it.

    Call :meth:`poll` from a timer; read :attr:`state`, :attr:`progress` (0..1 or ``None``
    when unknown), :attr:`status`, :attr:`eta_s`, :attr:`elapsed_s`, :attr:`error`.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.progress: float | None = None
        self.status = "starting"
        self.eta_s: float | None = None
        self.error: str | None = None
        self._failed_after_job = False

    @property
    def state(self) -> JobState:
        return JobState.FAILED if self._failed_after_job else self.job.state

    @property
    def elapsed_s(self) -> float:
        return self.job.elapsed_s

    def poll(self) -> list[dict[str, Any]]:
        """Read new events, update progress and, once the job has ended, finish up."""
        was_final = self.job.state.is_final
        events = self.job.poll()
        for event in events:
            self._on_event(event)
        if self.job.state.is_final and not was_final:
            self._on_end()
        return events

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> JobState:
        """Block until the task ends (tests, the self-test); the GUI polls instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.poll()
        while not self.state.is_final:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            self.poll()
        return self.state

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Ask the job to stop; later polls kill it if it is still there after ``grace_s``."""
        self.status = "cancelling"
        self.job.cancel(grace_s=grace_s, wait=False)

    def describe(self) -> str:
        """The status line every front end shows, e.g. ``"iteration 5/250, loss 0.4100 —
        elapsed 1:02, about 9:10 left"`` (the time left only while the job runs)."""
        text = f"{self.status} — elapsed {format_clock(self.elapsed_s)}"
        if self.eta_s and not self.state.is_final:
            text += f", about {format_clock(self.eta_s)} left"
        return text

    def _on_event(self, event: dict[str, Any]) -> None:  # pragma: no cover - overridden
        pass

    def _on_end(self) -> None:
        state = self.job.state
        if state is JobState.FAILED:
            self.error = self.job.error_message()
            self.status = "failed"
            log.error("job in %s failed: %s", self.job.folder, self.error)
        elif state is JobState.CANCELLED:
            self.status = "cancelled"
        else:
            try:
                self._on_success()
            except Exception as exc:  # shown to the user; the traceback goes to the log
                log.exception("finishing the job in %s failed", self.job.folder)
                self._failed_after_job = True
                self.error = str(exc)
                self.status = "failed"

    def _on_success(self) -> None:
        self.progress = 1.0
        self.eta_s = 0.0
        self.status = "completed"


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
            self.error = _with_panel_words(self.error, self.panel_words)

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


class FineTuneTask(Task):
    """``dkuxnet train`` on exported pairs; losses and Dice go to table and plot nodes."""

    def __init__(self, job: Job, run_dir: Path, plots: TrainingPlots) -> None:
        super().__init__(job)
        self.run_dir = run_dir
        self.plots = plots
        self.best_dice: float | None = None
        self.best_iteration: int | None = None  # 0: the start model stayed the best
        self.iteration = 0
        self.total: int | None = None
        self.model_path: Path | None = None
        self.it_per_s: float | None = None

    def cancel(self, grace_s: float | None = None) -> None:
        """Ask training to stop after its current iteration (it then saves ``last.pt``).

        The request is the run's stop file, which the trainer polls every iteration on every
        platform, with a polite signal as a second way (see :mod:`dkuxnet.jobs`). The default
        grace period before the kill covers three iterations at the measured speed (at least
        :data:`CANCEL_GRACE_S`): on a CPU one iteration can take minutes.
        """
        if grace_s is None:
            grace_s = CANCEL_GRACE_S
            if self.it_per_s:
                grace_s = max(grace_s, 3.0 / self.it_per_s)
        super().cancel(grace_s)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "started":
            self.total = event.get("total") or self.total
            self.iteration = int(event.get("resumed_from") or 0)
            self.status = f"started on {event.get('device', '?')}"
        elif kind == "progress" and event.get("stage") == "pseudo-labels":
            # pseudo mode, before the first iteration: the start model labels the scans
            self.status = (
                f"labelling the unlabeled scans with the start model: "
                f"{event.get('done', '?')}/{event.get('total', '?')}"
            )
        elif kind == "iteration":
            self.iteration = int(event["iteration"])
            self.total = event.get("total") or self.total
            if self.total:
                self.progress = min(self.iteration / self.total, 1.0)
                rate = event.get("it_per_s")
                if isinstance(rate, int | float) and rate > 0:
                    self.it_per_s = float(rate)
                    self.eta_s = (self.total - self.iteration) / rate
            losses = event.get("losses") or {}
            self.plots.add_losses(self.iteration, losses)
            total_loss = losses.get("total", next(iter(losses.values()), None))
            self.status = f"iteration {self.iteration}/{self.total}" + (
                f", loss {total_loss:.4f}" if isinstance(total_loss, int | float) else ""
            )
        elif kind == "validation":
            mean = event.get("mean_dice")
            if isinstance(mean, int | float):
                self.plots.add_dice(int(event["iteration"]), float(mean))
                self.best_dice = max(self.best_dice or 0.0, float(mean))
        elif kind == "checkpoint" and event.get("kind") == "best":
            self.model_path = Path(event["path"])
            self.best_iteration = int(event.get("iteration", -1))

    def _on_success(self) -> None:
        found = model_checkpoint(self.run_dir)
        if found is None:
            raise InputError(f"training ended but wrote no model in {self.run_dir}")
        self.model_path = found
        super()._on_success()
        if self.best_dice is not None:
            self.status += f", best validation Dice {self.best_dice:.3f}"
        if self.best_iteration == 0:  # the trainer validated the start model first
            self.status += " (the start model's: the fine-tune did not beat it)"


@dataclasses.dataclass(frozen=True)
class TimeEstimate:
    """Seconds per Fine-tune iteration, measured on this machine by ``dkuxnet estimate``.

    The duration of any iteration count follows from it without measuring again.
    """

    s_per_iteration: float
    device: str
    precision: str
    busy: str | None = None  # why the figure is pessimistic (a busy CPU), if it is

    @classmethod
    def from_output(cls, text: str) -> TimeEstimate:
        """Read the last JSON line that ``dkuxnet estimate --json`` printed (log lines aside)."""
        for line in reversed(text.splitlines()):
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            seconds = record.get("s_per_iteration") if isinstance(record, dict) else None
            if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0:
                device, precision = record.get("device", "?"), record.get("precision", "?")
                busy = record.get("busy")
                return cls(float(seconds), str(device), str(precision), str(busy) if busy else None)
        raise InputError("the time estimate printed no seconds per iteration")

    def total_s(self, iterations: int) -> float:
        return self.s_per_iteration * iterations

    def describe(self, iterations: int) -> str:
        """The panel's line, e.g. ``Expected: about 14 min for 250 iterations (3.4 s per
        iteration, measured on this machine, cpu, bfloat16)``."""
        s = self.s_per_iteration
        per_iteration = f"{s:.1f}" if s >= 1 else f"{s:.2f}"
        return (
            f"Expected: {format_duration(self.total_s(iterations))} for {iterations} "
            f"iterations ({per_iteration} s per iteration, measured on this machine, "
            f"{self.device}, {self.precision})" + (f"; note: {self.busy}" if self.busy else "")
        )


class EstimateTask(Task):
    """``dkuxnet estimate``: a few timed training iterations; :attr:`result` once it ends well.

    Args:
        job: the started job.
        iterations: the iteration count the user chose (for :attr:`status`).
        on_result: called with the measurement (the logic keeps it per model and device).
    """

    def __init__(
        self, job: Job, iterations: int, on_result: Callable[[TimeEstimate], None]
    ) -> None:
        super().__init__(job)
        self.iterations = iterations
        self.result: TimeEstimate | None = None
        self.status = "measuring…"
        self._on_result = on_result

    def cancel(self, grace_s: float = PREDICT_CANCEL_GRACE_S) -> None:
        super().cancel(grace_s)  # nothing to save

    def _on_end(self) -> None:
        super()._on_end()
        if self.job.state is JobState.FAILED:  # the child's own one-line error, if it gave one
            self.error = _command_error(self.job.log_tail()) or self.error

    def _on_success(self) -> None:
        text = self.job.log_path.read_text(encoding="utf-8", errors="replace")
        self.result = TimeEstimate.from_output(text)
        self._on_result(self.result)
        super()._on_success()
        self.status = self.result.describe(self.iterations)
        shutil.rmtree(self.job.folder, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class RankedVolume:
    """One row of the "Suggest next to label" ranking.

    Attributes:
        rank: 1 = the volume to label first.
        node_id: the volume node (it may have been removed since).
        name: the node's name (as it was when the ranking started, if it is gone).
        score: mean uncertainty over the predicted foreground and its border; ``inf`` when the
            model segmented nothing (that volume ranks first).
        foreground_voxels: voxels the model segmented.
    """

    rank: int
    node_id: str
    name: str
    score: float
    foreground_voxels: int

    @property
    def score_text(self) -> str:
        return "nothing segmented" if math.isinf(self.score) else f"{self.score:.4g}"


class RankTask(Task):
    """``dkuxnet rank`` on exported volumes; :attr:`ranking` and :attr:`table` once it ends well.

    Args:
        job: the started job (``--events`` in its folder, ``--output`` = ``csv_path``).
        scene: the scene of the volumes.
        csv_path: the ranking the child writes.
        cases: case name of each exported file -> ``(node ID, node name)``.
        table_node: returns the table node to fill (the logic reuses one).
    """

    def __init__(
        self,
        job: Job,
        scene: slicer.vtkMRMLScene,
        csv_path: Path,
        cases: dict[str, tuple[str, str]],
        table_node: Callable[[], slicer.vtkMRMLTableNode],
        panel_words: Mapping[str, str] = PANEL_WORDS,
    ) -> None:
        super().__init__(job)
        self.panel_words = panel_words
        self.scene = scene
        self.csv_path = csv_path
        self.cases = dict(cases)
        self.uncertainty_measure: str | None = None
        self.ranking: list[RankedVolume] = []
        self.table: slicer.vtkMRMLTableNode | None = None
        self.status = "ranking…"
        self._table_node = table_node

    def cancel(self, grace_s: float = PREDICT_CANCEL_GRACE_S) -> None:
        super().cancel(grace_s)  # nothing to save

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "started":
            self.progress = 0.0
            self.uncertainty_measure = event.get("uncertainty")
            self.status = (
                f"ranking {event.get('total', '?')} volume(s) by "
                f"{uncertainty_label(self.uncertainty_measure)} on {event.get('device', '?')}"
            )
        elif kind == "progress":
            done, total = event.get("done"), event.get("total")
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                self.progress = min(done / total, 1.0)
                self.status = f"ranked {done}/{total}: {self._name(str(event.get('case')))}"

    def _on_end(self) -> None:
        super()._on_end()
        if self.job.state is JobState.FAILED and self.error:
            self.error = _with_panel_words(self.error, self.panel_words)

    def _on_success(self) -> None:
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        ranking = []
        for row in rows:
            case = row["case"]
            if case not in self.cases:
                raise InputError(f"the ranking names a scan that was not exported: {case!r}")
            node_id = self.cases[case][0]
            ranking.append(
                RankedVolume(
                    int(row["rank"]),
                    node_id,
                    self._name(case),
                    float(row["score"]),
                    int(row["foreground_voxels"]),
                )
            )
        self.ranking = sorted(ranking, key=lambda r: r.rank)
        self.table = self._table_node()
        fill_ranking_table(self.table, self.ranking, self.uncertainty_measure)
        super()._on_success()
        first = self.ranking[0].name if self.ranking else "?"
        self.status = (
            f"{len(self.ranking)} volume(s) ranked by {uncertainty_label(self.uncertainty_measure)}"
            f" over the predicted foreground and its border; label {first} next"
        )
        shutil.rmtree(self.job.folder, ignore_errors=True)

    def _name(self, case: str) -> str:
        """The volume's current name (its name at the start when it was removed)."""
        node_id, name = self.cases.get(case, ("", case))
        node = self.scene.GetNodeByID(node_id) if node_id else None
        return node.GetName() if node is not None else name


RANKING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "int"),
    ("volume", "string"),
    ("score", "double"),
    ("foreground voxels", "int"),
)


def fill_ranking_table(
    table: slicer.vtkMRMLTableNode, ranking: Sequence[RankedVolume], measure: str | None
) -> None:
    """Replace the table's contents with the ranking, one row per volume in rank order.

    Columns :data:`RANKING_COLUMNS`; the score column's title names the measure, e.g.
    ``score (flip variance)``, and so does the attribute :data:`UNCERTAINTY_MEASURE_ATTRIBUTE`.
    """
    was_modifying = table.StartModify()
    table.RemoveAllColumns()
    arrays = {"int": vtk.vtkIntArray, "string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray}
    columns = {}
    for name, kind in RANKING_COLUMNS:
        column = arrays[kind]()
        column.SetName(name)
        table.AddColumn(column)
        columns[name] = column
    for row in ranking:
        columns["rank"].InsertNextValue(row.rank)
        columns["volume"].InsertNextValue(row.name)
        columns["score"].InsertNextValue(row.score)
        columns["foreground voxels"].InsertNextValue(row.foreground_voxels)
    table.SetColumnTitle("score", f"score ({uncertainty_label(measure)})")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetAttribute(UNCERTAINTY_MEASURE_ATTRIBUTE, measure or "")
    table.GetTable().Modified()
    table.EndModify(was_modifying)


def _with_panel_words(error: str, words: Mapping[str, str]) -> str:
    """The child's message, with its command-line options named as the front end names them
    (``words``: see :data:`PANEL_WORDS`)."""
    for key, text in words.items():
        if key.lower() in error.lower():
            error += text
    return error


def _command_error(log_text: str) -> str | None:
    """The message of the last ``dkuxnet CMD: error: MESSAGE`` line (see ``dkuxnet.cli``)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("dkuxnet ") and ": error: " in line:
            return line.split(": error: ", 1)[1]
    return None


# ---------------------------------------------------------------------------------- plots
class TrainingPlots:
    """Table and plot chart nodes with the loss curves and validation Dice of one run."""

    X = "iteration"

    def __init__(self, scene: slicer.vtkMRMLScene, name: str = "DKUXNet fine-tuning") -> None:
        self.scene = scene
        self.loss_table = self._table(f"{name} losses")
        self.dice_table = self._table(f"{name} validation Dice")
        self.loss_chart = self._chart(f"{name} loss", "loss")
        self.dice_chart = self._chart(f"{name} validation Dice", "mean Dice")
        self._add_column(self.dice_table, "mean Dice")
        self._series(self.dice_chart, self.dice_table, "mean Dice", (0.1, 0.6, 0.2))

    def add_losses(self, iteration: int, losses: dict[str, Any]) -> None:
        """Append one row; a loss seen for the first time gets a column and a curve."""
        for name in losses:
            if self._column(self.loss_table, name) is None:
                self._add_column(self.loss_table, name)
                colour = _PALETTE[(self.loss_table.GetNumberOfColumns() - 2) % len(_PALETTE)]
                self._series(self.loss_chart, self.loss_table, name, colour)
        self._append(self.loss_table, iteration, losses)

    def add_dice(self, iteration: int, mean_dice: float) -> None:
        self._append(self.dice_table, iteration, {"mean Dice": mean_dice})

    def clear(self) -> None:
        for table in (self.loss_table, self.dice_table):
            t = table.GetTable()
            for i in range(t.GetNumberOfColumns()):
                t.GetColumn(i).SetNumberOfTuples(0)
            t.Modified()
            table.Modified()

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        """Fill the tables from an existing event file (resuming, reloading)."""
        for event in events:
            if event.get("event") == "iteration":
                self.add_losses(int(event["iteration"]), event.get("losses") or {})
            elif event.get("event") == "validation" and event.get("mean_dice") is not None:
                self.add_dice(int(event["iteration"]), float(event["mean_dice"]))

    def nodes(self) -> list[slicer.vtkMRMLNode]:
        return [self.loss_table, self.dice_table, self.loss_chart, self.dice_chart]

    def loss_curves(self) -> dict[str, list[tuple[float, float]]]:
        """Each loss as ``(iteration, value)`` points, read back from the table (a front end
        that draws its own charts, such as the web page, reads the same nodes)."""
        return _table_curves(self.loss_table, self.X)

    def dice_curves(self) -> dict[str, list[tuple[float, float]]]:
        """The validation Dice as ``(iteration, value)`` points, like :meth:`loss_curves`."""
        return _table_curves(self.dice_table, self.X)

    # internals
    def _table(self, name: str) -> slicer.vtkMRMLTableNode:
        table = self.scene.AddNewNodeByClass(
            "vtkMRMLTableNode", self.scene.GenerateUniqueName(name)
        )
        self._add_column(table, self.X)
        return table

    def _chart(self, title: str, y_title: str) -> slicer.vtkMRMLPlotChartNode:
        chart = self.scene.AddNewNodeByClass(
            "vtkMRMLPlotChartNode", self.scene.GenerateUniqueName(title)
        )
        chart.SetTitle(title)
        chart.SetXAxisTitle(self.X)
        chart.SetYAxisTitle(y_title)
        return chart

    def _series(self, chart, table, column: str, colour: tuple[float, float, float]) -> None:
        series = self.scene.AddNewNodeByClass(
            "vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(column)
        )
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(self.X)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())

    @staticmethod
    def _column(table: slicer.vtkMRMLTableNode, name: str):
        return table.GetTable().GetColumnByName(name)

    @staticmethod
    def _add_column(table: slicer.vtkMRMLTableNode, name: str) -> None:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        column.SetNumberOfTuples(table.GetNumberOfRows())
        column.Fill(math.nan)  # earlier rows did not have this value
        table.AddColumn(column)

    def _append(self, table: slicer.vtkMRMLTableNode, iteration: int, values: dict) -> None:
        t = table.GetTable()
        for i in range(t.GetNumberOfColumns()):
            column = t.GetColumn(i)
            name = column.GetName()
            value = iteration if name == self.X else values.get(name, math.nan)
            column.InsertNextValue(float(value) if isinstance(value, int | float) else math.nan)
        t.Modified()
        table.Modified()


def _table_curves(
    table: slicer.vtkMRMLTableNode, x_name: str
) -> dict[str, list[tuple[float, float]]]:
    """Column name -> its ``(x, y)`` points, rows where either is not a number left out."""
    t = table.GetTable()
    x = t.GetColumnByName(x_name)
    curves: dict[str, list[tuple[float, float]]] = {}
    for i in range(t.GetNumberOfColumns()):
        column = t.GetColumn(i)
        if column is x:
            continue
        points = [(x.GetValue(r), column.GetValue(r)) for r in range(t.GetNumberOfRows())]
        curves[column.GetName()] = [
            (float(a), float(b)) for a, b in points if math.isfinite(a) and math.isfinite(b)
        ]
    return curves


_PALETTE = [(0.85, 0.33, 0.1), (0.0, 0.45, 0.74), (0.49, 0.18, 0.56), (0.47, 0.67, 0.19)]


# ---------------------------------------------------------------------------------- the logic
class DKUXNetLogic:
    """Starts Segment and Fine-tune jobs for nodes of one scene.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in the application).
        jobs_dir: where temporary job folders go (Segment jobs are deleted when imported).
        runs_dir: where fine-tuning runs are kept (the new models live there).
        python_executable: the interpreter of the child (``PythonSlicer`` in Slicer).
        command_factory: ``dkuxnet`` arguments -> full command line; the default runs
            ``python -m dkuxnet``. Tests inject a stand-in child here.
        panel_words: what a child's error gets added when it names an option, keyed by the
            words it names (:data:`PANEL_WORDS`: the Slicer panel's controls).
    """

    def __init__(
        self,
        scene: slicer.vtkMRMLScene,
        jobs_dir: str | Path,
        runs_dir: str | Path | None = None,
        python_executable: str | None = None,
        command_factory: CommandFactory | None = None,
        panel_words: Mapping[str, str] = PANEL_WORDS,
    ) -> None:
        self.scene = scene
        self.panel_words = panel_words  # added to the children's errors (see PANEL_WORDS)
        self.jobs_dir = Path(jobs_dir)
        self.runs_dir = Path(runs_dir) if runs_dir else self.jobs_dir / "runs"
        self.command_factory: CommandFactory = command_factory or (
            lambda args: dkuxnet_command(args, python_executable)
        )
        # the last measurement per (model, device, settings): see cached_estimate()
        self._estimates: dict[tuple[str, str, tuple[str, ...]], TimeEstimate] = {}
        self._ranking_table_id: str | None = None  # one table for every ranking

    # Segment
    def start_segment(
        self,
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
        _check_device(device)
        roi_corners = (
            slicer_bridge.roi_corners_in_volume_frame(roi_node, volume_node)
            if roi_node is not None
            else None
        )
        folder = _new_job_folder(self.jobs_dir, "segment")
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
        job = Job(folder, self.command_factory(args), config=config).start()
        return SegmentTask(
            job,
            volume_node,
            output_path,
            segmentation_node,
            keep_folder,
            uncertainty_path,
            self.panel_words,
        )

    # Suggest next to label
    def start_rank(
        self,
        volumes: Sequence[slicer.vtkMRMLVolumeNode],
        model: str | Path,
        device: str = "auto",
        tta: bool = False,
    ) -> RankTask:
        """Export the volumes and start ``dkuxnet rank`` on them; returns the running task.

        The volumes are the Fine-tune panel's unlabeled ones; the model is the one Segment uses
        (a single network needs ``tta``, as for the uncertainty map). The task's ranking fills
        one table node, reused by later rankings (:meth:`ranking_table`).

        Raises:
            InputError: no volumes, or a bad device.
        """
        _check_device(device)
        nodes = list({node.GetID(): node for node in volumes if node is not None}.values())
        if not nodes:
            raise InputError(
                "no unlabeled volumes to rank: add the scans you could label next under "
                "Unlabeled volume in the Fine-tune section first"
            )
        folder = _new_job_folder(self.jobs_dir, "rank")
        cases: dict[str, tuple[str, str]] = {}
        for i, node in enumerate(nodes):
            case = f"scan_{i:03d}"  # the file name: node names need not be unique or valid
            write_volume(slicer_bridge.volume_from_node(node), folder / "scans" / f"{case}.nrrd")
            cases[case] = (node.GetID(), node.GetName())
        csv_path = folder / "ranking.csv"
        args = ["rank", "--model", str(model), "--input", str(folder / "scans")]
        args += ["--output", str(csv_path), "--device", device]
        args += ["--events", str(folder / EVENTS_FILE)] + (["--tta"] if tta else [])
        config = {"task": "rank", "volumes": [n.GetName() for n in nodes], "model": str(model)}
        job = Job(folder, self.command_factory(args), config=config).start()
        return RankTask(job, self.scene, csv_path, cases, self.ranking_table, self.panel_words)

    def ranking_table(self) -> slicer.vtkMRMLTableNode:
        """The table node rankings are written to: the last one while it is in the scene."""
        node = self.scene.GetNodeByID(self._ranking_table_id) if self._ranking_table_id else None
        if node is None:
            name = self.scene.GenerateUniqueName(RANKING_TABLE_NAME)
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
            self._ranking_table_id = node.GetID()
        return node

    # Fine-tune
    def start_fine_tune(
        self,
        pairs: Sequence[LabeledPair],
        unlabeled: Sequence[slicer.vtkMRMLVolumeNode] = (),
        iterations: int = DEFAULT_FINE_TUNE_ITERATIONS,
        init_model: str | Path | None = None,
        device: str = "auto",
        extra_settings: Sequence[str] = (),
    ) -> FineTuneTask:
        """Export the examples and start ``dkuxnet train``; returns the running task.

        Args:
            pairs: labeled examples (at least one).
            unlabeled: volumes used by the semi-supervised branch.
            iterations: training iterations.
            init_model: start from this checkpoint (the current model) instead of scratch.
            device: ``auto``, ``cpu`` or ``cuda``.
            extra_settings: ``section.key=value`` overrides passed as ``--set``.
        """
        recipe = _recipe_args(iterations, init_model, device, extra_settings)
        if not pairs:
            raise InputError("add at least one labeled volume (volume + segmentation + segment)")
        folder = _new_job_folder(self.runs_dir, "finetune")
        export_datalist(folder, pairs, unlabeled)
        args = ["train", "--data", str(folder / "datalist.json"), "--out", str(folder / "run")]
        args += [*recipe, "--quiet"]
        config = {"task": "fine-tune", "iterations": iterations, "device": device}
        config["init_model"] = str(init_model) if init_model else None
        (folder / "finetune.json").write_text(json.dumps({"args": args[1:], **config}, indent=2))
        return self._start_training(folder, args, config, resume=False)

    # Estimate time
    def start_estimate(
        self,
        init_model: str | Path | None,
        iterations: int = DEFAULT_FINE_TUNE_ITERATIONS,
        device: str = "auto",
        extra_settings: Sequence[str] = (),
    ) -> EstimateTask:
        """Start ``dkuxnet estimate`` for the run :meth:`start_fine_tune` would start.

        Same arguments, so the same recipe is timed: the start model's patch and spacing (a
        new model: the preset's, as the data's plan is not known yet), dual mode, the device
        and the ``--set`` overrides. Takes 10-60 s on a CPU; the result is also kept for
        :meth:`cached_estimate`.
        """
        recipe = _recipe_args(iterations, init_model, device, extra_settings)
        folder = _new_job_folder(self.jobs_dir, "estimate")
        key = _estimate_key(init_model, device, extra_settings)
        config = {"task": "estimate", "iterations": iterations, "device": device}
        config["init_model"] = str(init_model) if init_model else None

        def remember(result: TimeEstimate) -> None:
            self._estimates[key] = result

        command = self.command_factory(["estimate", *recipe, "--json"])
        job = Job(folder, command, config=config).start()
        return EstimateTask(job, iterations, on_result=remember)

    def cached_estimate(
        self, init_model: str | Path | None, device: str, extra_settings: Sequence[str] = ()
    ) -> TimeEstimate | None:
        """The last measurement for this model and device, ``None`` when there is none."""
        return self._estimates.get(_estimate_key(init_model, device, extra_settings))

    def estimate_text(self, params: Parameters) -> str:
        """The Fine-tune time for the panel's choices, from the last measurement; ``""`` when
        these choices have not been measured (or do not lead to a model)."""
        try:
            init_model, device = fine_tune_model_and_device(params)
        except InputError:
            return ""
        estimate = self.cached_estimate(init_model, device)
        return estimate.describe(params.iterations) if estimate else ""

    def resume_fine_tune(
        self, folder: str | Path, plots: TrainingPlots | None = None
    ) -> FineTuneTask:
        """Continue a cancelled or failed fine-tuning run from its ``last.pt``."""
        folder = Path(folder)
        settings_file = folder / "finetune.json"
        if not settings_file.is_file():
            raise InputError(f"{folder} is not a fine-tuning folder of this module")
        settings = json.loads(settings_file.read_text())
        if not can_resume(folder / "run"):
            raise InputError(f"{folder / 'run'} has no last.pt to resume from")
        args = ["train", *settings["args"], "--resume"]
        return self._start_training(folder, args, settings, resume=True, plots=plots)

    def _start_training(
        self,
        folder: Path,
        args: list[str],
        config: dict[str, Any],
        resume: bool,
        plots: TrainingPlots | None = None,
    ) -> FineTuneTask:
        run_dir = folder / "run"
        events_path = run_dir / EVENTS_FILE
        if plots is None:
            plots = TrainingPlots(self.scene, name=f"DKUXNet {folder.name}")
            plots.replay(read_events(events_path))  # history of a resumed run
        job = Job(
            folder,
            self.command_factory(args),
            events_path=events_path,
            config=config,
            skip_existing_events=resume,
            stop_file=run_dir
            / STOP_REQUEST_FILE,  # Cancel: stop after this iteration, keep last.pt
        ).start()
        return FineTuneTask(job, run_dir, plots)

    @staticmethod
    def adopt_model(task: FineTuneTask, parameters: Parameters) -> None:
        """Make a finished run's model the one Segment uses."""
        if task.state is not JobState.COMPLETED or task.model_path is None:
            raise InputError("the fine-tuning run has not completed")
        parameters.model_source = "run"
        parameters.model_path = str(task.run_dir)


def export_datalist(
    folder: Path,
    pairs: Sequence[LabeledPair],
    unlabeled: Sequence[slicer.vtkMRMLVolumeNode] = (),
) -> Path:
    """Write the examples as NRRD under ``folder/data`` and a MONAI-style datalist.

    Each label is the chosen segment exported on the grid of its volume (0/1). Paths in the
    datalist are relative to it, so the folder can be moved.
    """
    data = folder / "data"
    training: list[dict[str, str]] = []
    for i, pair in enumerate(pairs):
        image = slicer_bridge.volume_from_node(pair.volume)
        label = slicer_bridge.export_segment(pair.segmentation, pair.segment_id, pair.volume)
        if not label.array.any():
            raise InputError(f"the segment of {pair.describe()} is empty")
        image_path = write_volume(image, data / f"labeled_{i:03d}_image.nrrd")
        label_path = write_volume(label, data / f"labeled_{i:03d}_label.nrrd")
        training.append(
            {
                "image": image_path.relative_to(folder).as_posix(),
                "label": label_path.relative_to(folder).as_posix(),
            }
        )
    unlabeled_items = []
    for i, node in enumerate(unlabeled):
        path = write_volume(
            slicer_bridge.volume_from_node(node), data / f"unlabeled_{i:03d}_image.nrrd"
        )
        unlabeled_items.append({"image": path.relative_to(folder).as_posix()})
    datalist = folder / "datalist.json"
    datalist.write_text(
        json.dumps({"training": training, "unlabeled": unlabeled_items}, indent=2) + "\n"
    )
    return datalist


def _recipe_args(
    iterations: int, init_model: str | Path | None, device: str, extra_settings: Sequence[str]
) -> list[str]:
    """The arguments that define a training recipe, shared by ``train`` and ``estimate``."""
    _check_device(device)
    if iterations < 1:
        raise InputError("iterations must be at least 1")
    args = ["--iterations", str(iterations), "--device", device]
    if init_model:
        args += ["--init", str(init_model)]
    for setting in extra_settings:
        args += ["--set", setting]
    return args


def _estimate_key(
    init_model: str | Path | None, device: str, extra_settings: Sequence[str]
) -> tuple[str, str, tuple[str, ...]]:
    return (str(Path(init_model).resolve()) if init_model else "", device, tuple(extra_settings))


def _check_device(device: str) -> None:
    if device not in DEVICE_CHOICES:
        raise InputError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
