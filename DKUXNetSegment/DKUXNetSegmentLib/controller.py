"""What the Slicer panel and the web page both do, so that they only render it.

A front end keeps one :class:`Controller` over the logic and its parameter node. A click
calls one of its actions (:meth:`Controller.segment`, :meth:`~Controller.suggest_next`,
:meth:`~Controller.estimate_time`, :meth:`~Controller.start_fine_tune`,
:meth:`~Controller.resume_fine_tune`, the cancels, :meth:`~Controller.place_segment_region`),
which starts a job with the current choices or raises :class:`InputError` saying why not. A
timer calls :meth:`Controller.poll`, which reads the jobs' events, does what a job's end
means for every front end (a finished fine-tune's model becomes the one Segment uses) and
returns one :class:`Outcome` per job that ended, for the front end to announce in its way
(a dialog, a message line). :meth:`Controller.view` is everything the front ends show, as
plain values: which actions may start, each job's progress and status line, the Place box
advice, the ranking, the expected Fine-tune time.

A new option of Segment or Fine-tune is a :class:`~.parameters.Parameters` property that the
actions here pass on, plus a control in each renderer; nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import slicer

from dkuxnet.errors import InputError
from dkuxnet.jobs import JobState

from .estimate import EstimateTask
from .fine_tune import FineTuneTask, adopt_model, can_resume_fine_tune
from .logic import DKUXNetLogic
from .parameters import Parameters, fine_tune_model_and_device, resolve_model
from .rank import RankedVolume, RankTask
from .segment import SegmentTask
from .segment_region import PLACE_BOX_PANEL_WORDS, place_segment_region, segment_region_advice
from .tasks import Task

#: How loudly a front end announces an :class:`Outcome`: ``error``, ``warning`` and ``info``
#: are worth a dialog in the panel; ``status`` only changes what the status line shows.
Level = Literal["error", "warning", "info", "status"]
#: Which job an :class:`Outcome` is about.
Action = Literal["segment", "rank", "fine_tune"]

TaskT = TypeVar("TaskT", bound=Task)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A job that ended, and what to tell the user about it.

    Attributes:
        action: which job.
        task: the ended task (its result nodes, warnings, error).
        text: one sentence, e.g. ``"Segmentation failed."``.
        level: how loudly to say it (:data:`Level`).
        details: the child's error, for a details box; ``""`` when none.
        warnings: what the model found implausible about a finished result.
    """

    action: Action
    task: Task
    text: str
    level: Level = "status"
    details: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """All of it on one line: ``"Segmentation failed: <error>"``,
        ``"Segmentation finished. Warning: <warning>"``."""
        text = f"{self.text.rstrip('.')}: {self.details}" if self.details else self.text
        return text + "".join(f" Warning: {warning}" for warning in self.warnings)


@dataclasses.dataclass(frozen=True)
class TaskView:
    """One job as a front end shows it: a progress bar and a status line.

    Attributes:
        running: the job has not ended (its Cancel is enabled).
        progress: percent done; 0 while unknown.
        status: :meth:`Task.describe`, e.g. ``"iteration 5/250, loss 0.4100 — elapsed 1:02,
            about 9:10 left"``; ``""`` before the first job.
    """

    running: bool = False
    progress: int = 0
    status: str = ""

    @classmethod
    def of(cls, task: Task | None) -> TaskView:
        if task is None:
            return cls()
        progress = 0 if task.progress is None else int(round(100 * task.progress))
        return cls(not task.state.is_final, progress, task.describe())


@dataclasses.dataclass(frozen=True)
class View:
    """Everything the front ends show, as plain values.

    Attributes:
        model_text: the model Segment uses, or why there is none.
        can_segment: a volume is chosen and no Segment runs.
        segment: the Segment job.
        region_advice: what to do about a scan that shows more than the heart (the Place box
            button shows with it); ``""``: nothing to say.
        can_place_box: a volume is chosen and no Segment runs.
        can_rank: no ranking runs (with no unlabeled volumes, starting says what to do).
        ranking: the Suggest next to label job.
        ranked: the last ranking, most uncertain first; empty while a ranking runs.
        can_fine_tune: there are labeled examples and no Fine-tune runs.
        fine_tune: the Fine-tune job.
        can_resume: the last fine-tuning run stopped before its end and can continue.
        can_estimate: neither Fine-tune nor an estimate runs.
        estimate_text: the expected Fine-tune time (``"measuring…"`` while measured).
    """

    model_text: str
    can_segment: bool
    segment: TaskView
    region_advice: str
    can_place_box: bool
    can_rank: bool
    ranking: TaskView
    ranked: tuple[RankedVolume, ...]
    can_fine_tune: bool
    fine_tune: TaskView
    can_resume: bool
    can_estimate: bool
    estimate_text: str


class Controller:
    """The current jobs of one front end, what may start, and what each ending does.

    Args:
        logic: starts the jobs.
        parameters: returns the parameter node's view (called on every use, so a front end
            whose scene was closed and reopened gets the new node).
        place_box_words: what the Place box advice tells the user to do, in the front end's
            words (:data:`~.segment_region.PLACE_BOX_PANEL_WORDS`: the Slicer panel's).
    """

    def __init__(
        self,
        logic: DKUXNetLogic,
        parameters: Callable[[], Parameters],
        place_box_words: Mapping[str, str] = PLACE_BOX_PANEL_WORDS,
    ) -> None:
        self.logic = logic
        self._parameters = parameters
        self.place_box_words = place_box_words
        self.segment_task: SegmentTask | None = None
        self.rank_task: RankTask | None = None
        self.estimate_task: EstimateTask | None = None
        self.fine_tune_task: FineTuneTask | None = None

    @property
    def parameters(self) -> Parameters:
        return self._parameters()

    def tasks(self) -> tuple[Task | None, ...]:
        return (self.segment_task, self.rank_task, self.estimate_task, self.fine_tune_task)

    def running(self) -> bool:
        """Whether any job still runs (the front end's timer may stop when none does)."""
        return any(_running(task) for task in self.tasks())

    # ------------------------------------------------------------------ Segment
    def segment(self) -> SegmentTask:
        """Segment the chosen volume with the chosen model, device, TTA, uncertainty map,
        region of interest and output segmentation.

        Raises:
            InputError: a Segment already running, no volume, no model; nothing started.
        """
        if _running(self.segment_task):
            raise InputError("a segmentation is already running; wait for it or cancel it")
        params = self.parameters
        volume = params.input_volume
        if volume is None:
            raise InputError("choose or load a volume first")
        model = resolve_model(params.model_source, params.model_path)
        self.segment_task = self.logic.start_segment(
            volume,
            model,
            device=params.device,
            tta=params.tta,
            segmentation_node=params.output_segmentation,
            uncertainty=params.show_uncertainty,
            roi_node=params.roi,
        )
        return self.segment_task

    def cancel_segment(self) -> None:
        if (task := _active(self.segment_task)) is not None:
            task.cancel()

    def place_segment_region(self) -> slicer.vtkMRMLMarkupsROINode:
        """Put the "Segment region" box at the chosen volume's centre and choose it for
        Segment (:func:`~.segment_region.place_segment_region`).

        Raises:
            InputError: no volume chosen, or one without image data.
        """
        params = self.parameters
        if params.input_volume is None:
            raise InputError("choose or load a volume first")
        roi = place_segment_region(self.logic.scene, params.input_volume)
        params.roi = roi
        return roi

    # ------------------------------------------------------------------ Suggest next to label
    def suggest_next(self) -> RankTask:
        """Rank the unlabeled volumes by the Segment model's uncertainty, most unsure first.

        Raises:
            InputError: a ranking already running, no unlabeled volumes, no model.
        """
        if _running(self.rank_task):
            raise InputError("the ranking is already running; wait for it or cancel it")
        params = self.parameters
        model = resolve_model(params.model_source, params.model_path)
        self.rank_task = self.logic.start_rank(
            params.unlabeled_volumes, model, params.device, params.tta
        )
        return self.rank_task

    def cancel_suggest_next(self) -> None:
        if (task := _active(self.rank_task)) is not None:
            task.cancel()

    def ranked_volume(self, row: int) -> slicer.vtkMRMLVolumeNode | None:
        """The volume of row ``row`` of the last ranking, if it is still in the scene."""
        ranked = self.rank_task.ranking if self.rank_task is not None else []
        if not 0 <= row < len(ranked):
            return None
        return self.logic.scene.GetNodeByID(ranked[row].node_id)

    # ------------------------------------------------------------------ Fine-tune
    def estimate_time(self) -> EstimateTask:
        """Measure how long the chosen Fine-tune takes on this machine (10-60 s on a CPU).

        Raises:
            InputError: an estimate or a Fine-tune running (it would slow training down and
                measure nothing useful), or no start model.
        """
        if _running(self.fine_tune_task):
            raise InputError("fine-tuning is running; estimate the time when it has ended")
        if _running(self.estimate_task):
            raise InputError("the time estimate is already running")
        params = self.parameters
        init_model, device = fine_tune_model_and_device(params)
        self.estimate_task = self.logic.start_estimate(init_model, params.iterations, device)
        return self.estimate_task

    def start_fine_tune(self) -> FineTuneTask:
        """Fine-tune on the examples with the chosen iterations, start model and device.

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
        """Continue the last cancelled or failed Fine-tune from its ``last.pt``, in the same
        curves.

        Raises:
            InputError: a Fine-tune running, or no run to resume (:meth:`can_resume`).
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
        """The parameter node's last fine-tuning folder can continue: no Fine-tune runs, the
        last one of this session did not complete, and the folder holds this module's
        settings and a ``last.pt`` (:func:`~.fine_tune.can_resume_fine_tune`)."""
        task = self.fine_tune_task
        if task is not None and task.state in (JobState.RUNNING, JobState.COMPLETED):
            return False
        return can_resume_fine_tune(self.parameters.fine_tune_folder)

    def _started_fine_tune(self, task: FineTuneTask) -> FineTuneTask:
        self.fine_tune_task = task
        if (estimate := _active(self.estimate_task)) is not None:
            estimate.cancel()  # it would slow training down and measure nothing useful
        self.parameters.fine_tune_folder = str(task.job.folder)
        return task

    # ------------------------------------------------------------------ the timer
    def poll(self) -> list[Outcome]:
        """Read the running jobs' new events; act on the ones that just ended.

        Returns:
            One :class:`Outcome` per Segment, ranking or Fine-tune that ended in this call (an
            estimate's end shows in :attr:`View.estimate_text`).
        """
        outcomes = []
        if (segment := _poll(self.segment_task)) is not None:
            outcomes.append(self._segment_ended(segment))
        if (ranking := _poll(self.rank_task)) is not None:
            outcomes.append(self._rank_ended(ranking))
        if (fine_tune := _poll(self.fine_tune_task)) is not None:
            outcomes.append(self._fine_tune_ended(fine_tune))
        _poll(self.estimate_task)
        return outcomes

    @staticmethod
    def _segment_ended(task: SegmentTask) -> Outcome:
        if task.state is JobState.COMPLETED:
            level: Level = "warning" if task.warnings else "status"
            return Outcome(
                "segment", task, "Segmentation finished.", level, warnings=(*task.warnings,)
            )
        if task.state is JobState.CANCELLED:
            return Outcome("segment", task, "Segmentation cancelled.")
        return Outcome("segment", task, "Segmentation failed.", "error", task.error or "")

    @staticmethod
    def _rank_ended(task: RankTask) -> Outcome:
        if task.state is JobState.COMPLETED:  # "3 volume(s) ranked by entropy ...; label X next"
            return Outcome("rank", task, task.status[:1].upper() + task.status[1:] + ".")
        if task.state is JobState.CANCELLED:
            return Outcome("rank", task, "Ranking cancelled.")
        text = "Could not rank the unlabeled volumes."
        return Outcome("rank", task, text, "error", task.error or "")

    def _fine_tune_ended(self, task: FineTuneTask) -> Outcome:
        if task.state is JobState.COMPLETED:
            adopt_model(task, self.parameters)
            text = f"Fine-tuning finished; Segment now uses {task.model_path}."
            if task.best_iteration == 0:  # training.start_check kept the start model
                text = (
                    "Fine-tuning finished without beating the start model on the validation "
                    f"scan; Segment uses the start model's weights, saved as {task.model_path}."
                )
            return Outcome("fine_tune", task, text, "info")
        if task.state is JobState.CANCELLED:
            text = "Fine-tuning cancelled; Resume continues from the last iteration."
            return Outcome("fine_tune", task, text)
        return Outcome("fine_tune", task, "Fine-tuning failed.", "error", task.error or "")

    def stop_all(self, grace_s: float = 5.0) -> None:
        """Stop every running job and wait for it (the application is closing: no job may
        outlive it)."""
        for task in self.tasks():
            if (active := _active(task)) is not None:
                active.job.cancel(grace_s=grace_s, wait=True)

    # ------------------------------------------------------------------ what the views show
    def view(self) -> View:
        params = self.parameters
        volume = params.input_volume
        segmenting, training = _running(self.segment_task), _running(self.fine_tune_task)
        advice = segment_region_advice(volume, params.roi, self.segment_task, self.place_box_words)
        ranking = _running(self.rank_task)
        ranked = () if ranking or self.rank_task is None else tuple(self.rank_task.ranking)
        return View(
            model_text=self.model_text(),
            can_segment=volume is not None and not segmenting,
            segment=TaskView.of(self.segment_task),
            region_advice=advice or "",
            can_place_box=volume is not None and not segmenting,
            can_rank=not ranking,
            ranking=TaskView.of(self.rank_task),
            ranked=ranked,
            can_fine_tune=bool(params.labeled_pairs) and not training,
            fine_tune=TaskView.of(self.fine_tune_task),
            can_resume=not training and self.can_resume(),
            can_estimate=not training and not _running(self.estimate_task),
            estimate_text=self.estimate_text(),
        )

    def model_text(self) -> str:
        """The model Segment uses, e.g. ``"bundled model dkuxnet_la.pt"``."""
        params = self.parameters
        try:
            model = resolve_model(params.model_source, params.model_path)
        except InputError as exc:
            return f"no model: {exc}"
        if params.model_source == "default":
            return f"bundled model {model.name}"
        kind = "fine-tuned model" if params.model_source == "run" else "model"
        return f"{kind} {model}"

    def estimate_text(self) -> str:
        """``"measuring…"``, the last measurement's failure, or the expected Fine-tune time
        for the current choices (``""`` when they have not been measured)."""
        task = self.estimate_task
        if _running(task):
            return "measuring…"
        if task is not None and task.state is JobState.FAILED:
            return f"Could not measure: {task.error}"
        return self.logic.estimate_text(self.parameters)


def _active(task: TaskT | None) -> TaskT | None:
    """``task`` while it runs, else ``None``."""
    return task if task is not None and not task.state.is_final else None


def _poll(task: TaskT | None) -> TaskT | None:
    """Poll ``task`` if it runs; returns it when it has just ended, else ``None``."""
    if (active := _active(task)) is None:
        return None
    active.poll()
    return active if active.state.is_final else None


def _running(task: Task | None) -> bool:
    return _active(task) is not None
