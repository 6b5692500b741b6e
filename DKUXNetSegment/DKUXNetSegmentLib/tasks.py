"""What every background job shares: the :class:`Task` the front ends poll, and starting one.

A task wraps a :class:`dkuxnet.jobs.Job` (a ``dkuxnet`` child process writing JSON-line
events); its subclasses (:mod:`.segment`, :mod:`.rank`, :mod:`.estimate`, :mod:`.fine_tune`)
turn the events into :attr:`Task.progress` and :attr:`Task.status` and, when the job ends well,
its outputs into MRML nodes. Progress, ETA and status come from event fields, never from
parsing text.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import InputError
from dkuxnet.jobs import Job, JobState
from dkuxnet.reports import format_clock

log = logging.getLogger(__name__)

CommandFactory = Callable[[Sequence[str]], list[str]]

# What the child processes import; the versions are the ones the extension is tested with.
REQUIRED_PACKAGES: dict[str, str] = {
    "torch": "torch>=2.2",
    "monai": "monai==1.6.1",
    "SimpleITK": "SimpleITK==2.5.7",
}
CANCEL_GRACE_S = 30.0
# Prediction has nothing to save; where the polite signal cannot arrive (Windows), Cancel
# should not make the user wait long for the kill.
PREDICT_CANCEL_GRACE_S = 5.0
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


def missing_packages(required: Iterable[str] = REQUIRED_PACKAGES) -> list[str]:
    """The import names of required packages that this Python cannot find."""
    return [name for name in required if importlib.util.find_spec(name) is None]


def check_device(device: str) -> None:
    if device not in DEVICE_CHOICES:
        raise InputError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")


def new_job_folder(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{stamp}-", dir=parent))


@dataclasses.dataclass(frozen=True)
class Launcher:
    """What starting any job needs, as the logic is set up at the moment of the start.

    Attributes:
        jobs_dir: where temporary job folders go.
        command_factory: ``dkuxnet`` arguments -> the full command line.
        panel_words: the front end's words for options a child's error names
            (:data:`PANEL_WORDS`).
    """

    jobs_dir: Path
    command_factory: CommandFactory
    panel_words: Mapping[str, str] = dataclasses.field(default_factory=lambda: PANEL_WORDS)

    def new_folder(self, prefix: str, parent: Path | None = None) -> Path:
        """A new, empty job folder ``PREFIX-DATE-TIME-XXXX`` under ``parent`` or the jobs'."""
        return new_job_folder(parent or self.jobs_dir, prefix)

    def start(self, folder: Path, args: Sequence[str], **job_options: Any) -> Job:
        """Start ``dkuxnet ARGS`` as a job in ``folder`` (options: see :class:`Job`)."""
        return Job(folder, self.command_factory(args), **job_options).start()


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


def with_panel_words(error: str, words: Mapping[str, str]) -> str:
    """The child's message, with its command-line options named as the front end names them
    (``words``: see :data:`PANEL_WORDS`)."""
    for key, text in words.items():
        if key.lower() in error.lower():
            error += text
    return error


def command_error(log_text: str) -> str | None:
    """The message of the last ``dkuxnet CMD: error: MESSAGE`` line (see ``dkuxnet.cli``)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("dkuxnet ") and ": error: " in line:
            return line.split(": error: ", 1)[1]
    return None
