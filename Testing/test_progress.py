"""The console progress bar that follows a run's events (``dkuxnet train`` and ``demo``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from dkuxnet.events import EVENTS_FILE, EventWriter
from dkuxnet.progress import follow_training


def test_no_empty_bar_before_training_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with follow_training(tmp_path):
        pass  # e.g. resampling or reading cases failed before "started"
    assert capsys.readouterr().err == ""


def test_each_validation_line_appears_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer_log = logging.getLogger("dkuxnet.training.trainer")
    handler = logging.StreamHandler(sys.stderr)  # as the CLI's logging set-up
    trainer_log.addHandler(handler)
    trainer_log.setLevel(logging.INFO)
    try:
        with follow_training(tmp_path):
            events = EventWriter(tmp_path / EVENTS_FILE)
            events.emit("started", total=2, resumed_from=0)
            events.emit("iteration", iteration=1, total=2, losses={"total": 1.0})
            events.emit("validation", iteration=1, mean_dice=0.5, best=True)
            trainer_log.info(
                "iteration %d: validation mean Dice %.4f", 1, 0.5,
                extra={"rendered_event": "validation"},
            )  # fmt: skip
        trainer_log.info(
            "iteration %d: validation mean Dice %.4f", 2, 0.6,
            extra={"rendered_event": "validation"},
        )  # fmt: skip  # without a bar the log line is the only one
    finally:
        trainer_log.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("validation mean Dice 0.5000") == 1, err
    assert err.count("validation mean Dice 0.6000") == 1, err
    assert "0it [" not in err
