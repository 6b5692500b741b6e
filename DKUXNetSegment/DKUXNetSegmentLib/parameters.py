"""The module's choices, kept in its parameter node, and the model they lead to.

:class:`Parameters` is the typed view of the parameter node (a ``vtkMRMLScriptedModuleNode``)
that every front end reads and writes; :class:`LabeledPair` is one fine-tuning example;
:func:`resolve_model` and :func:`fine_tune_model_and_device` turn the model choice into a
checkpoint file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer

from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import InputError
from dkuxnet.resources import default_model_path
from dkuxnet.runs import model_checkpoint

log = logging.getLogger(__name__)

MODEL_SOURCES = ("default", "run", "file")
# Fine-tune length unless the user changes it. A fine-tune from a model runs in pseudo mode
# (dkuxnet.run_config.FINE_TUNE_MODE): one network, about the cost of a supervised iteration
# (1.0 s on a 2-core bf16 CPU, 2.5-4 s on one without bf16), after the start model has labelled
# the unlabeled scans once (with flip TTA: 10-15 s a scan on the CPU without bf16); the paper's
# dual mode took 3.4 s on the bf16 CPU. On the fine-tune benchmark (docs/fine_tune_bench.md,
# 3 scanners, seed 0) 250 iterations scored -0.12 / +0.24 Dice points against 100 (the user's
# scans / other scans) and took 16.5-17.8 min on the fp32 CPU, over the panel's 15; 100 took
# 7-8 min. Estimate time measures the user's own machine. Also the value of iterationsSpinBox
# in the .ui file.
DEFAULT_FINE_TUNE_ITERATIONS = 100


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


# ---------------------------------------------------------------------------------- the model
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
