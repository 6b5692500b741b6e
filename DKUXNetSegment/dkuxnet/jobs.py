"""Background jobs: run ``dkuxnet predict|train`` as a child process and follow its events.

Shared by the Slicer module (which polls with a timer and must never block) and anything else
that wants a long computation out of its own process. A job is a folder::

    JOB/
      job.json        the command line, start time and anything the caller adds (config)
      job.log         the child's stdout and stderr, appended; its tail explains a failure
      events.jsonl    progress events (see dkuxnet.events); the path can be elsewhere, e.g.
                      a training run folder inside the job folder

The child runs in its own process group (its own console process group on Windows, with no
console window), so that ``cancel()`` reaches the whole process tree, data-loader workers
included. Stopping is polite first, then forced:

1. a stop file, when the job has one (``dkuxnet train`` polls ``RUN/stop.request`` every
   iteration, then saves ``last.pt`` and ends "cancelled"). It needs no signal, so it works on
   every platform, including Windows, where a console control event (CTRL_BREAK) never reaches
   a child of a GUI application such as Slicer;
2. a polite signal as a second way (SIGTERM; CTRL_BREAK on Windows, where it can arrive);
3. after ``grace_s``, a kill of everything that is left.

The state comes from the process exit code and the final ``finished`` event, never from text.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

from dkuxnet.events import EVENTS_FILE, EventReader, read_events

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
LOG_FILE = "job.log"
#: The environment variable that gives a child its run token; a stop file that holds the token
#: was written for this run (:func:`clear_stale_stop_request`).
RUN_TOKEN_ENV = "DKUXNET_RUN_TOKEN"
IS_WINDOWS = sys.platform == "win32"
# Windows process creation flags (``subprocess`` defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


class JobState(str, enum.Enum):
    """Where a job is in its life; the last three are final."""

    NOT_STARTED = "not_started"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)


def package_root() -> Path:
    """The folder that holds the ``dkuxnet`` package (the Slicer module folder)."""
    return Path(__file__).resolve().parent.parent


def clear_stale_stop_request(stop_file: Path, token: str | None = None) -> bool:
    """Remove a stop file left by an earlier run; keep one written for this run.

    A child that starts removes old stop requests, but the user may press Cancel while it
    starts (importing torch takes seconds): that request names the run's token (written by
    :meth:`Job.request_stop`) and must stop the run, not be lost. Without a token (a run not
    started by a :class:`Job`, e.g. ``dkuxnet train`` typed by hand) every stop file found at
    the start is old.

    Args:
        stop_file: the run's stop file.
        token: this run's token; :data:`RUN_TOKEN_ENV` of the environment by default.

    Returns:
        ``True`` when a stale file was removed.
    """
    token = os.environ.get(RUN_TOKEN_ENV) if token is None else token
    try:
        text = stop_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    if token and f"run {token}" in text:
        log.info("%s was written for this run: stopping after the first iteration", stop_file)
        return False
    stop_file.unlink(missing_ok=True)
    return True


#: How our OpenMP threads wait (read once, when torch's OpenMP runtime loads; see
#: :func:`share_the_cpu`): GNU libgomp (Linux) spins 1000 rounds, then sleeps (its default is
#: 300000; measured here, 1000 keeps the idle speed); other runtimes wait passively
OPENMP_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}


def share_the_cpu(env: MutableMapping[str, str]) -> None:
    """Put :data:`OPENMP_WAIT` into ``env`` unless it sets a wait policy or spin count of its
    own. Effective only for a process whose torch is not loaded yet.

    Our processes share the CPU with Slicer and often with each other (Segment while a
    Fine-tune runs), and OpenMP threads that spin while their partner waits for a core
    collapse. Measured on 2 cores (docs/speed.md), a whole LA scan's ``predict`` beside a
    running fine-tune: 17-23 s with the default spinning, 2.6-2.8 s with these settings;
    alone 1.7 s and 1.8 s; a fine-tune step alone 2.25-2.30 s and 2.13 s.
    """
    if not any(key in env for key in OPENMP_WAIT):
        env.update(OPENMP_WAIT)


def dkuxnet_command(args: Sequence[str], python_executable: str | None = None) -> list[str]:
    """The command line of ``python -m dkuxnet ARGS``.

    Args:
        args: the subcommand and its arguments, e.g. ``["predict", "--model", ...]``.
        python_executable: the interpreter; in Slicer this is ``PythonSlicer``. Defaults to the
            interpreter running this code.
    """
    return [python_executable or sys.executable, "-m", "dkuxnet", *map(str, args)]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with ``dkuxnet`` importable and unbuffered output.

    Slicer puts scripted-module folders on ``sys.path`` at run time, not in ``PYTHONPATH``, so a
    child ``PythonSlicer`` would not find the package without the first entry added here.

    Its OpenMP threads spin only briefly before they sleep (:func:`share_the_cpu`).
    """
    env = dict(os.environ)
    share_the_cpu(env)
    paths = [str(package_root())]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def popen_options(windows: bool = IS_WINDOWS) -> dict[str, Any]:
    """``subprocess.Popen`` keywords that give the child its own process group, and no window.

    On Windows a console program started from a GUI application (Slicer) opens a console window
    unless told not to; ``slicer.util.launchConsoleProcess`` hides it for the same reason.
    """
    if windows:
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}  # own session => own process group


class Job:
    """One child process with its job folder, event stream and log.

    Args:
        folder: the job folder (created if missing).
        command: the full command line (see :func:`dkuxnet_command`).
        events_path: where the child writes its events; ``folder/events.jsonl`` by default.
        env: the child's environment; :func:`child_environment` by default.
        config: extra JSON-able information recorded in ``job.json`` (e.g. the node names).
        skip_existing_events: do not report events already in ``events_path`` when the job
            starts (resuming a training run that appends to its old event file).
        stop_file: a file whose existence asks the child to stop cleanly (for ``dkuxnet
            train``: ``RUN/stop.request``); :meth:`request_stop` and :meth:`cancel` write it.

    Typical use (non-blocking): ``job.start()``; then, from a timer, ``for e in job.poll(): ...``
    until ``job.state.is_final``.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        command: Sequence[str],
        *,
        events_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        skip_existing_events: bool = False,
        stop_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.command = [str(c) for c in command]
        self.events_path = Path(events_path) if events_path else self.folder / EVENTS_FILE
        self.log_path = self.folder / LOG_FILE
        self.env = dict(env) if env is not None else child_environment()
        self.config = dict(config or {})
        self.skip_existing_events = skip_existing_events
        self.stop_file = Path(stop_file) if stop_file else None
        # Written into the stop file and given to the child, so that a Cancel sent before the
        # child reads its stop file is kept, and a stop file of an earlier run is not.
        self.run_token = uuid.uuid4().hex if self.stop_file else None
        if self.run_token:
            self.env[RUN_TOKEN_ENV] = self.run_token
        self.events: list[dict[str, Any]] = []
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._reader = EventReader(self.events_path)
        self._skip = 0
        self._returncode: int | None = None
        self._finished_event: dict[str, Any] | None = None
        self._cancel_requested = False
        self._kill_deadline: float | None = None
        self._state = JobState.NOT_STARTED

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Job:
        """Write ``job.json``, open the log and start the child; returns ``self``."""
        if self._process is not None:
            raise RuntimeError("job already started")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.skip_existing_events:
            self._skip = len(read_events(self.events_path))
        self.started_at = time.time()
        record = {"command": self.command, "started_at": self.started_at, **self.config}
        (self.folder / JOB_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the job ends
        self._log_file.write(f"$ {subprocess.list2cmdline(self.command)}\n".encode())
        self._log_file.flush()
        log.info("starting job in %s: %s", self.folder, " ".join(self.command))
        try:
            self._process = subprocess.Popen(
                self.command,
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                **popen_options(),
            )
        except OSError:
            self._close_log()
            raise
        self._state = JobState.RUNNING
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has ended (negative: killed by that signal)."""
        return self._returncode

    @property
    def state(self) -> JobState:
        """The current state; call :meth:`poll` to bring it up to date."""
        return self._state

    @property
    def elapsed_s(self) -> float:
        """Seconds since the start, frozen when the job ends."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    @property
    def finished_event(self) -> dict[str, Any] | None:
        """The child's ``finished`` event, if it wrote one."""
        return self._finished_event

    def poll(self) -> list[dict[str, Any]]:
        """Return the events written since the last call and update :attr:`state`.

        Never blocks. The exit code is read *before* the events, so when a job is seen to end
        its last events are in the same answer.
        """
        if self._process is None:
            return []
        exited = self._state.is_final or self._process.poll() is not None
        new = self._read_events()
        if self._state is JobState.RUNNING:
            if exited:
                self._on_exit()
            elif self._kill_deadline is not None and time.monotonic() >= self._kill_deadline:
                log.warning("job %s ignored the stop request; killing it", self.pid)
                self._kill_tree()
        return new

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> JobState:
        """Block until the job ends (or ``timeout`` seconds pass); returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.poll()
        while self._state is JobState.RUNNING:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            self.poll()
        return self._state

    def request_stop(self) -> bool:
        """Write the stop file (no signal, no deadline); ``False`` when the job has none.

        The child ends on its own, e.g. training after its current iteration with ``last.pt``
        saved and a ``finished`` event with status ``cancelled``.
        """
        if self.stop_file is None:
            return False
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.write_text(
            f"stop requested at {time.time():.3f}\nrun {self.run_token}\n", encoding="utf-8"
        )
        log.info("job %s: wrote %s", self.pid, self.stop_file)
        return True

    def cancel(self, grace_s: float = 10.0, wait: bool = True) -> None:
        """Stop the whole process tree: politely now, by force after ``grace_s``.

        Polite is the stop file (when the job has one) and then a polite signal, which does not
        reach every child (see the module docstring); the kill reaches all.

        Args:
            grace_s: seconds the child gets to finish cleanly (training saves ``last.pt``).
            wait: block until the tree is gone. With ``False`` (a GUI), :meth:`poll` sends the
                kill once the grace period is over.
        """
        if self._process is None or self._state.is_final:
            return
        self._cancel_requested = True
        if self._kill_deadline is None:
            self._kill_deadline = time.monotonic() + grace_s
            try:
                self.request_stop()
            except OSError as exc:  # e.g. the folder is gone: the signal and the kill remain
                log.warning("could not write the stop file %s: %s", self.stop_file, exc)
            self._signal_tree(polite=True)
        if not wait:
            return
        try:
            self._process.wait(timeout=max(0.0, self._kill_deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("job %s did not stop within %.1f s; killing it", self.pid, grace_s)
        self._kill_tree()
        self.poll()

    # ------------------------------------------------------------------ results
    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the child's output (shown to the user on failure)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(deque(f, maxlen=n)).rstrip("\n")
        except FileNotFoundError:
            return ""

    def error_message(self, n: int = 20) -> str:
        """Why the job failed: the child's own error when it reported one, else the log tail."""
        if self._finished_event and self._finished_event.get("error"):
            return str(self._finished_event["error"])
        code = self._returncode
        tail = self.log_tail(n)
        return f"exit code {code}" + (f"; last output:\n{tail}" if tail else "")

    # ------------------------------------------------------------------ internals
    def _read_events(self) -> list[dict[str, Any]]:
        new = self._reader.poll()
        if self._skip:
            dropped, new = new[: self._skip], new[self._skip :]
            self._skip -= len(dropped)
        for event in new:
            if event.get("event") == "finished":
                self._finished_event = event
        self.events.extend(new)
        return new

    def _on_exit(self) -> None:
        assert self._process is not None
        rc = self._process.wait()
        self._returncode = rc
        self.ended_at = time.time()
        if self._cancel_requested:
            self._kill_tree()  # grandchildren that outlived their parent
        self._close_log()
        status = (self._finished_event or {}).get("status")
        if status == "cancelled" or (
            self._cancel_requested and (rc != 0 or status not in (None, "completed"))
        ):
            self._state = JobState.CANCELLED
        elif rc == 0 and status in (None, "completed"):
            self._state = JobState.COMPLETED
        else:
            self._state = JobState.FAILED
        log.info("job %s ended: %s (exit code %s)", self.pid, self._state.value, rc)

    def _signal_tree(self, polite: bool) -> None:
        assert self._process is not None
        pid = self._process.pid
        try:
            if IS_WINDOWS:
                if polite:  # fails from a process without a console (Slicer): the stop file
                    os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                else:
                    subprocess.run(
                        ["taskkill", "/T", "/F", "/PID", str(pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        check=False,
                        creationflags=CREATE_NO_WINDOW,  # taskkill is a console program too
                    )
            else:
                os.killpg(pid, signal.SIGTERM if polite else signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError) as exc:
            log.debug("signal to job %s not delivered: %s", pid, exc)

    def _kill_tree(self) -> None:
        self._signal_tree(polite=False)
        assert self._process is not None
        try:
            self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable child
            log.error("job %s survived SIGKILL", self.pid)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __repr__(self) -> str:
        return f"Job(folder={str(self.folder)!r}, state={self._state.value}, pid={self.pid})"
