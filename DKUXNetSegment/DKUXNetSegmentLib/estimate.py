"""Estimate time: ``dkuxnet estimate`` times a few real iterations of the Fine-tune recipe.

Same start model, device and settings as Fine-tune would run; the child prints one JSON line.
The seconds per iteration are kept per (model, device) by the logic, so a new iteration count
needs no new measurement.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from dkuxnet.errors import InputError
from dkuxnet.grid import count_windows, resampled_grid
from dkuxnet.jobs import Job, JobState
from dkuxnet.reports import format_duration

from .fine_tune import recipe_args
from .parameters import DEFAULT_FINE_TUNE_ITERATIONS
from .tasks import PREDICT_CANCEL_GRACE_S, Launcher, Task, command_error


def start_estimate(
    launcher: Launcher,
    init_model: str | Path | None,
    iterations: int = DEFAULT_FINE_TUNE_ITERATIONS,
    device: str = "auto",
    extra_settings: Sequence[str] = (),
    on_result: Callable[[TimeEstimate], None] = lambda result: None,
) -> EstimateTask:
    """Start ``dkuxnet estimate`` for the run :func:`.fine_tune.start_fine_tune` would start.

    Same arguments, so the same recipe is timed: the start model's patch and spacing (a
    new model: the preset's, as the data's plan is not known yet), dual mode, the device
    and the ``--set`` overrides. Takes 10-60 s on a CPU; the result is also kept for
    ``on_result`` (the logic keeps it per model and device).
    """
    recipe = recipe_args(iterations, init_model, device, extra_settings)
    folder = launcher.new_folder("estimate")
    config = {"task": "estimate", "iterations": iterations, "device": device}
    config["init_model"] = str(init_model) if init_model else None
    job = launcher.start(folder, ["estimate", *recipe, "--json"], config=config)
    return EstimateTask(job, iterations, on_result=on_result)


def estimate_key(
    init_model: str | Path | None, device: str, extra_settings: Sequence[str]
) -> tuple[str, str, tuple[str, ...]]:
    return (str(Path(init_model).resolve()) if init_model else "", device, tuple(extra_settings))


@dataclasses.dataclass(frozen=True)
class TimeEstimate:
    """Seconds per Fine-tune iteration, measured on this machine by ``dkuxnet estimate``.

    The duration of any iteration count follows from it without measuring again.
    """

    s_per_iteration: float
    device: str
    precision: str
    busy: str | None = None  # why the figure is pessimistic (a busy CPU), if it is
    # pseudo mode: the start model labels each unlabeled scan first, one window at a time
    s_per_window: float | None = None
    patch_size: tuple[int, ...] = ()
    target_spacing: tuple[float, ...] = ()  # (x, y, z) mm; empty: the scans' own grid
    overlap: float = 0.5

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
                window = record.get("s_per_window")
                return cls(
                    float(seconds),
                    str(device),
                    str(precision),
                    str(busy) if busy else None,
                    float(window) if isinstance(window, int | float) else None,
                    tuple(int(n) for n in record.get("patch_size") or ()),
                    tuple(float(v) for v in record.get("target_spacing") or ()),
                    float(record.get("overlap", 0.5)),
                )
        raise InputError("the time estimate printed no seconds per iteration")

    def total_s(self, iterations: int) -> float:
        return self.s_per_iteration * iterations

    def labelling_s(self, scans: Sequence[tuple[Sequence[int], Sequence[float]]]) -> float:
        """Seconds pseudo mode spends labelling ``scans`` (each its ``(x, y, z)`` size and
        spacing) before the first iteration: their sliding windows at the model's grid."""
        if self.s_per_window is None or not self.patch_size:
            return 0.0
        windows = 0
        for size, spacing in scans:
            grid = resampled_grid(size, spacing, self.target_spacing or spacing)  # (x, y, z)
            windows += count_windows(grid[::-1], self.patch_size, self.overlap)  # (z, y, x)
        return self.s_per_window * windows

    def describe(self, iterations: int, labelling_s: float = 0.0, scans: int = 0) -> str:
        """The panel's line, e.g. ``Expected: about 14 min for 250 iterations (3.4 s per
        iteration, measured on this machine, cpu, bfloat16)``; with ``labelling_s`` (pseudo
        mode, :meth:`labelling_s` of the ``scans`` unlabeled volumes) the total includes it."""
        s = self.s_per_iteration
        per_iteration = f"{s:.1f}" if s >= 1 else f"{s:.2f}"
        labelling = ""
        if labelling_s > 0:
            labelling = f", labelling {scans} unlabeled volume(s) first: {labelling_s:.0f} s"
        return (
            f"Expected: {format_duration(self.total_s(iterations) + labelling_s)} for "
            f"{iterations} iterations ({per_iteration} s per iteration{labelling}, measured on "
            f"this machine, {self.device}, {self.precision})"
            + (f"; note: {self.busy}" if self.busy else "")
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
            self.error = command_error(self.job.log_tail()) or self.error

    def _on_success(self) -> None:
        text = self.job.log_path.read_text(encoding="utf-8", errors="replace")
        self.result = TimeEstimate.from_output(text)
        self._on_result(self.result)
        super()._on_success()
        self.status = self.result.describe(self.iterations)
        shutil.rmtree(self.job.folder, ignore_errors=True)
