"""``dkuxnet plot``: training curves from a run's event stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dkuxnet.cli import main
from dkuxnet.events import EventWriter
from dkuxnet.plots import plot_curves


def _run(folder: Path, iterations: int = 20, validations: bool = True) -> Path:
    events = EventWriter(folder / "events.jsonl")
    events.emit("started", job="train", total=iterations)
    for i in range(1, iterations + 1):
        losses = {"sup_a": 1.0 / i, "segc": 0.0 if i == 1 else 0.1, "weight": 0.0, "total": 2.0 / i}
        events.emit("iteration", iteration=i, total=iterations, losses=losses)
        if validations and i % 5 == 0:
            events.emit("validation", iteration=i, mean_dice=0.5 + i / 100, dice={"c": 0.5})
    events.emit("finished", status="completed", error=None)
    return folder


def test_plot_writes_curves_into_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    out = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(out)
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 5  # lines were drawn, not an empty canvas
    assert main(["plot", str(run)]) == 0  # the run's own figure is simply refreshed


def test_plot_without_validations_and_to_another_file(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", iterations=3, validations=False)
    out = plot_curves(run, tmp_path / "figs" / "c.png")
    assert out == tmp_path / "figs" / "c.png" and out.stat().st_size > 0


def test_plot_refuses_bad_runs_and_keeps_existing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(tmp_path / "missing")]) == 1
    assert "run folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 1
    assert "no training iterations" in capsys.readouterr().err
    run = _run(tmp_path / "run")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's picture")
    assert main(["plot", str(run), "--output", str(mine)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's picture"
    assert main(["plot", str(run), "--output", str(mine), "--overwrite"]) == 0
    assert mine.read_bytes()[:4] == b"\x89PNG"
