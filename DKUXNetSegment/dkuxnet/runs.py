"""The run folder of ``dkuxnet train``: the names of its files and what they say about the run.

Torch-free, so that the Slicer module, the web page and the scripts can ask whether a run
finished, can be resumed or which model it holds without importing the trainer.

============================  =============================================================
``config.json``               the run's whole recipe (:class:`~dkuxnet.config.TrainConfig`)
``events.jsonl``              the event protocol (:mod:`dkuxnet.events`)
``last.pt``                   the latest checkpoint (exact resume)
``best.pt``                   the checkpoint of the best validation Dice
``stop.request``              asks the trainer to stop after the current iteration (below)
============================  =============================================================
"""

from __future__ import annotations

from pathlib import Path

from dkuxnet.events import EVENTS_FILE, read_events

__all__ = [
    "BEST_CHECKPOINT",
    "CONFIG_FILE",
    "EVENTS_FILE",
    "LAST_CHECKPOINT",
    "STOP_REQUEST_FILE",
    "can_resume",
    "holds_a_run",
    "is_completed",
    "model_checkpoint",
]

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: A file of this name in the run folder asks the trainer to stop after the current iteration
#: (saving ``last.pt``). Polled every iteration; unlike a signal it reaches a training process
#: on every platform (Windows GUI children get no console events). One left by an earlier run
#: is removed when a run starts; one written for this run stops it
#: (:func:`dkuxnet.jobs.clear_stale_stop_request`).
STOP_REQUEST_FILE = "stop.request"


def model_checkpoint(run_dir: Path) -> Path | None:
    """The model a run folder holds: ``best.pt``, else ``last.pt``; ``None`` when neither."""
    for name in (BEST_CHECKPOINT, LAST_CHECKPOINT):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def can_resume(run_dir: Path) -> bool:
    """The run folder has a ``last.pt`` to continue from."""
    return (run_dir / LAST_CHECKPOINT).is_file()


def is_completed(run_dir: Path) -> bool:
    """The run's last ``finished`` event has status ``completed`` (a completed run resumed for
    more iterations and cancelled is not completed)."""
    finished = [e for e in read_events(run_dir / EVENTS_FILE) if e.get("event") == "finished"]
    return bool(finished) and finished[-1].get("status") == "completed"


def holds_a_run(run_dir: Path) -> bool:
    """A checkpoint, or a session that got as far as ``started`` (an attempt that failed on
    bad input before training began leaves only a ``finished`` event and may be retried)."""
    if (run_dir / LAST_CHECKPOINT).exists() or (run_dir / BEST_CHECKPOINT).exists():
        return True
    return any(e.get("event") == "started" for e in read_events(run_dir / EVENTS_FILE))
