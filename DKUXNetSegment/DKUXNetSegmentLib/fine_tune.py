"""Fine-tune: ``dkuxnet train`` on the labeled and unlabeled volumes, resumable.

Every labeled pair (volume + segmentation + segment) and unlabeled volume is exported under
``JOB/data/`` with a MONAI-style ``JOB/datalist.json``; ``dkuxnet train`` writes ``JOB/run/``
(events, ``best.pt``, ``last.pt``). Iteration and validation events are appended to MRML table
nodes, which plot chart nodes draw (:mod:`.plots`). A cancelled or failed run can be resumed;
a completed one's model becomes the one Segment uses (:func:`adopt_model`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer

from dkuxnet.errors import InputError
from dkuxnet.events import EVENTS_FILE, read_events
from dkuxnet.io import write_volume
from dkuxnet.jobs import Job, JobState
from dkuxnet.runs import STOP_REQUEST_FILE, can_resume, model_checkpoint

from . import slicer_bridge
from .parameters import DEFAULT_FINE_TUNE_ITERATIONS, LabeledPair, Parameters
from .plots import TrainingPlots
from .tasks import CANCEL_GRACE_S, Launcher, Task, check_device

#: What a fine-tuning job folder holds besides ``run/``: the arguments that resume it.
SETTINGS_FILE = "finetune.json"


def start_fine_tune(
    launcher: Launcher,
    scene: slicer.vtkMRMLScene,
    runs_dir: Path,
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
    recipe = recipe_args(iterations, init_model, device, extra_settings)
    if not pairs:
        raise InputError("add at least one labeled volume (volume + segmentation + segment)")
    folder = launcher.new_folder("finetune", parent=runs_dir)
    export_datalist(folder, pairs, unlabeled)
    args = ["train", "--data", str(folder / "datalist.json"), "--out", str(folder / "run")]
    args += [*recipe, "--quiet"]
    config = {"task": "fine-tune", "iterations": iterations, "device": device}
    config["init_model"] = str(init_model) if init_model else None
    (folder / SETTINGS_FILE).write_text(json.dumps({"args": args[1:], **config}, indent=2))
    return _start_training(launcher, scene, folder, args, config, resume=False)


def resume_fine_tune(
    launcher: Launcher,
    scene: slicer.vtkMRMLScene,
    folder: str | Path,
    plots: TrainingPlots | None = None,
) -> FineTuneTask:
    """Continue a cancelled or failed fine-tuning run from its ``last.pt``."""
    folder = Path(folder)
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        raise InputError(f"{folder} is not a fine-tuning folder of this module")
    settings = json.loads(settings_file.read_text())
    if not can_resume(folder / "run"):
        raise InputError(f"{folder / 'run'} has no last.pt to resume from")
    args = ["train", *settings["args"], "--resume"]
    return _start_training(launcher, scene, folder, args, settings, resume=True, plots=plots)


def can_resume_fine_tune(folder: str | Path | None) -> bool:
    """``folder`` is a fine-tuning job folder of this module whose run has a ``last.pt``:
    what :func:`resume_fine_tune` needs (whether it is worth resuming is the caller's call)."""
    if not folder:
        return False
    folder = Path(folder)
    return (folder / SETTINGS_FILE).is_file() and can_resume(folder / "run")


def _start_training(
    launcher: Launcher,
    scene: slicer.vtkMRMLScene,
    folder: Path,
    args: list[str],
    config: dict[str, Any],
    resume: bool,
    plots: TrainingPlots | None = None,
) -> FineTuneTask:
    run_dir = folder / "run"
    events_path = run_dir / EVENTS_FILE
    if plots is None:
        plots = TrainingPlots(scene, name=f"DKUXNet {folder.name}")
        plots.replay(read_events(events_path))  # history of a resumed run
    job = launcher.start(
        folder,
        args,
        events_path=events_path,
        config=config,
        skip_existing_events=resume,
        stop_file=run_dir / STOP_REQUEST_FILE,  # Cancel: stop after this iteration, keep last.pt
    )
    return FineTuneTask(job, run_dir, plots)


def adopt_model(task: FineTuneTask, parameters: Parameters) -> None:
    """Make a finished run's model the one Segment uses."""
    if task.state is not JobState.COMPLETED or task.model_path is None:
        raise InputError("the fine-tuning run has not completed")
    parameters.model_source = "run"
    parameters.model_path = str(task.run_dir)


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
            # pseudo mode: the start model labels the scans before the first iteration, and
            # with training.pseudo_refresh_every the network being trained labels them again
            who = (
                f"the network of iteration {self.iteration}"
                if self.iteration
                else "the start model"
            )
            self.status = (
                f"labelling the unlabeled scans with {who}: "
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


def recipe_args(
    iterations: int, init_model: str | Path | None, device: str, extra_settings: Sequence[str]
) -> list[str]:
    """The arguments that define a training recipe, shared by ``train`` and ``estimate``."""
    check_device(device)
    if iterations < 1:
        raise InputError("iterations must be at least 1")
    args = ["--iterations", str(iterations), "--device", device]
    if init_model:
        args += ["--init", str(init_model)]
    for setting in extra_settings:
        args += ["--set", setting]
    return args
