"""The logic of the DKUXNetSegment module: Segment and Fine-tune as background jobs.

Nothing here imports qt or needs ``slicer.app``: the front ends (the Slicer panel,
``DKUXNetSegment.py``, and the web page, ``DKUXNetSegmentWeb``) drive :class:`DKUXNetLogic`
through :class:`~DKUXNetSegmentLib.controller.Controller` and poll the returned tasks from a
timer; the test suite does the same on the ``slicer-core`` package with a real child process.

:class:`DKUXNetLogic` holds what the jobs of one scene share (folders, the ``dkuxnet`` command,
the front end's words, the last time estimates, the ranking table); each job lives in its own
module, which says how it is started and what its end makes in the scene:

* :mod:`.parameters` -- the choices in the parameter node, the model they lead to;
* :mod:`.tasks` -- the :class:`Task` every job is, starting a job;
* :mod:`.segment` -- Segment (``dkuxnet predict``), with :mod:`.uncertainty` for its map;
* :mod:`.rank` -- Suggest next to label (``dkuxnet rank``);
* :mod:`.estimate` -- Estimate time (``dkuxnet estimate``);
* :mod:`.fine_tune` -- Fine-tune (``dkuxnet train``), resume, adopting the new model;
* :mod:`.plots` -- the loss and Dice curves as table and chart nodes.

Every name the front ends, tests and scripts import from here keeps working
(``from DKUXNetSegmentLib.logic import DKUXNetLogic, Parameters, ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import slicer

from dkuxnet.errors import InputError
from dkuxnet.jobs import JobState, dkuxnet_command
from dkuxnet.reports import format_clock, format_duration
from dkuxnet.resources import default_model_path

from . import estimate, fine_tune, rank, segment
from .estimate import EstimateTask, TimeEstimate
from .fine_tune import FineTuneTask, adopt_model, can_resume_fine_tune, export_datalist
from .parameters import (
    DEFAULT_FINE_TUNE_ITERATIONS,
    LEGACY_PAIR_ROLES,
    LEGACY_SEGMENT_IDS,
    MODEL_SOURCES,
    LabeledPair,
    Parameters,
    fine_tune_model_and_device,
    resolve_model,
)
from .plots import TrainingPlots
from .rank import RANKING_COLUMNS, RANKING_TABLE_NAME, RankedVolume, RankTask, fill_ranking_table
from .segment import PREDICT_STAGES, ROI_DECIMALS, SegmentTask
from .tasks import (
    CANCEL_GRACE_S,
    PANEL_WORDS,
    PREDICT_CANCEL_GRACE_S,
    REQUIRED_PACKAGES,
    ROI_PANEL_WORDS,
    CommandFactory,
    Launcher,
    Task,
    missing_packages,
)
from .uncertainty import (
    UNCERTAINTY_COLOR_NODE_IDS,
    UNCERTAINTY_HIDDEN_SHARE,
    UNCERTAINTY_LABELS,
    UNCERTAINTY_MEASURE_ATTRIBUTE,
    UNCERTAINTY_OPACITY,
    default_input_volume,
    hide_uncertainty_maps,
    is_uncertainty_map,
    segmentable_volumes,
    show_uncertainty_map,
    uncertainty_label,
    uncertainty_node_name,
    uncertainty_window,
    volume_selector_hidden_ids,
)

__all__ = [
    "CANCEL_GRACE_S",
    "DEFAULT_FINE_TUNE_ITERATIONS",
    "LEGACY_PAIR_ROLES",
    "LEGACY_SEGMENT_IDS",
    "MODEL_SOURCES",
    "PANEL_WORDS",
    "PREDICT_CANCEL_GRACE_S",
    "PREDICT_STAGES",
    "RANKING_COLUMNS",
    "RANKING_TABLE_NAME",
    "REQUIRED_PACKAGES",
    "ROI_DECIMALS",
    "ROI_PANEL_WORDS",
    "UNCERTAINTY_COLOR_NODE_IDS",
    "UNCERTAINTY_HIDDEN_SHARE",
    "UNCERTAINTY_LABELS",
    "UNCERTAINTY_MEASURE_ATTRIBUTE",
    "UNCERTAINTY_OPACITY",
    "CommandFactory",
    "DKUXNetLogic",
    "EstimateTask",
    "FineTuneTask",
    "InputError",
    "JobState",
    "LabeledPair",
    "Parameters",
    "RankTask",
    "RankedVolume",
    "SegmentTask",
    "Task",
    "TimeEstimate",
    "TrainingPlots",
    "adopt_model",
    "can_resume_fine_tune",
    "default_input_volume",
    "default_model_path",
    "export_datalist",
    "fill_ranking_table",
    "fine_tune_model_and_device",
    "format_clock",
    "format_duration",
    "hide_uncertainty_maps",
    "is_uncertainty_map",
    "missing_packages",
    "resolve_model",
    "segmentable_volumes",
    "show_uncertainty_map",
    "uncertainty_label",
    "uncertainty_node_name",
    "uncertainty_window",
    "volume_selector_hidden_ids",
]


class DKUXNetLogic:
    """Starts Segment, Suggest next, Estimate time and Fine-tune jobs for nodes of one scene.

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

    @property
    def launcher(self) -> Launcher:
        """Folders, command and words as they are now (a test may swap the command)."""
        return Launcher(self.jobs_dir, self.command_factory, self.panel_words)

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
        """Start Segment on ``volume_node``: :func:`.segment.start_segment`."""
        return segment.start_segment(
            self.launcher,
            volume_node,
            model,
            device,
            tta,
            segmentation_node,
            keep_folder,
            uncertainty,
            roi_node,
        )

    # Suggest next to label
    def start_rank(
        self,
        volumes: Sequence[slicer.vtkMRMLVolumeNode],
        model: str | Path,
        device: str = "auto",
        tta: bool = False,
    ) -> RankTask:
        """Rank ``volumes`` by the model's uncertainty: :func:`.rank.start_rank`; the ranking
        fills one table node, reused by later rankings (:meth:`ranking_table`)."""
        return rank.start_rank(
            self.launcher, self.scene, volumes, model, device, tta, self.ranking_table
        )

    def ranking_table(self) -> slicer.vtkMRMLTableNode:
        """The table node rankings are written to: the last one while it is in the scene."""
        node = self.scene.GetNodeByID(self._ranking_table_id) if self._ranking_table_id else None
        if node is None:
            node = rank.new_ranking_table(self.scene)
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
        """Start Fine-tune in a new folder of :attr:`runs_dir`:
        :func:`.fine_tune.start_fine_tune`."""
        return fine_tune.start_fine_tune(
            self.launcher,
            self.scene,
            self.runs_dir,
            pairs,
            unlabeled,
            iterations,
            init_model,
            device,
            extra_settings,
        )

    def resume_fine_tune(
        self, folder: str | Path, plots: TrainingPlots | None = None
    ) -> FineTuneTask:
        """Continue a cancelled or failed fine-tuning run from its ``last.pt``."""
        return fine_tune.resume_fine_tune(self.launcher, self.scene, folder, plots)

    adopt_model = staticmethod(adopt_model)

    # Estimate time
    def start_estimate(
        self,
        init_model: str | Path | None,
        iterations: int = DEFAULT_FINE_TUNE_ITERATIONS,
        device: str = "auto",
        extra_settings: Sequence[str] = (),
    ) -> EstimateTask:
        """Time the run :meth:`start_fine_tune` would start (:func:`.estimate.start_estimate`);
        the result is also kept for :meth:`cached_estimate`."""
        key = estimate.estimate_key(init_model, device, extra_settings)

        def remember(result: TimeEstimate) -> None:
            self._estimates[key] = result

        return estimate.start_estimate(
            self.launcher, init_model, iterations, device, extra_settings, on_result=remember
        )

    def cached_estimate(
        self, init_model: str | Path | None, device: str, extra_settings: Sequence[str] = ()
    ) -> TimeEstimate | None:
        """The last measurement for this model and device, ``None`` when there is none."""
        return self._estimates.get(estimate.estimate_key(init_model, device, extra_settings))

    def estimate_text(self, params: Parameters) -> str:
        """The Fine-tune time for the panel's choices, from the last measurement; ``""`` when
        these choices have not been measured (or do not lead to a model)."""
        try:
            init_model, device = fine_tune_model_and_device(params)
        except InputError:
            return ""
        measured = self.cached_estimate(init_model, device)
        if measured is None:
            return ""
        scans = [
            (node.GetImageData().GetDimensions(), node.GetSpacing())
            for node in params.unlabeled_volumes
            if node.GetImageData() is not None
        ]
        return measured.describe(params.iterations, measured.labelling_s(scans), len(scans))
