"""The run-folder layout's questions (``dkuxnet.runs``), on hand-written folders."""

from __future__ import annotations

import json
from pathlib import Path

from dkuxnet.runs import (
    BEST_CHECKPOINT,
    EVENTS_FILE,
    LAST_CHECKPOINT,
    can_resume,
    holds_a_run,
    is_completed,
    model_checkpoint,
)


def _events(run: Path, *events: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))


def test_completed_is_what_the_last_finish_says(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not is_completed(run)  # no folder, no events
    _events(run, {"event": "started"})
    assert not is_completed(run)  # still running, or killed
    _events(run, {"event": "started"}, {"event": "finished", "status": "cancelled"})
    assert not is_completed(run)
    done = ({"event": "started"}, {"event": "finished", "status": "completed"})
    _events(run, *done)
    assert is_completed(run)
    # resumed for more iterations, then cancelled: not completed any more
    _events(run, *done, {"event": "started"}, {"event": "finished", "status": "cancelled"})
    assert not is_completed(run)
    _events(run, *done, {"event": "started"}, {"event": "finished", "status": "completed"})
    assert is_completed(run)


def test_the_model_is_best_else_last_and_a_resume_needs_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert model_checkpoint(run) is None and not can_resume(run) and not holds_a_run(run)
    (run / LAST_CHECKPOINT).write_bytes(b"x")
    assert model_checkpoint(run) == run / LAST_CHECKPOINT and can_resume(run) and holds_a_run(run)
    (run / BEST_CHECKPOINT).write_bytes(b"x")
    assert model_checkpoint(run) == run / BEST_CHECKPOINT
    (run / LAST_CHECKPOINT).unlink()
    assert model_checkpoint(run) == run / BEST_CHECKPOINT and not can_resume(run)
    (run / BEST_CHECKPOINT).unlink()
    (run / BEST_CHECKPOINT).mkdir()  # a folder of that name is not a model
    assert model_checkpoint(run) is None


def test_a_run_is_held_once_it_started_not_after_a_bad_input_failure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _events(run, {"event": "finished", "status": "failed"})  # refused before training began
    assert not holds_a_run(run)
    _events(run, {"event": "started"}, {"event": "finished", "status": "failed"})
    assert holds_a_run(run)
