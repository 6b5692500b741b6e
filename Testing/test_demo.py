"""The demo pipeline end to end, shrunk to seconds (the real demo trains for minutes)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dkuxnet.cli import main as cli_main
from dkuxnet.demo import DemoSettings, run_demo
from dkuxnet.errors import OutputExistsError


def test_demo_writes_a_complete_report(tmp_path: Path) -> None:
    settings = DemoSettings(
        n_labeled=2, n_unlabeled=2, n_test=2, shape=(32, 48, 48), patch_size=(32, 32, 32),
        iterations=2,
    )  # fmt: skip
    result = run_demo(tmp_path / "demo", settings, device="cpu", progress=False)
    out = tmp_path / "demo"
    for name in ("report.md", "metrics.csv", "curves.png", "slices.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["synth_004", "synth_005"]
    assert 0.0 <= result.summary["dice"]["mean"] <= 1.0
    assert result.report == out / "report.md"
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2


def test_demo_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("user file")
    with pytest.raises(OutputExistsError, match="not empty"):
        run_demo(tmp_path, DemoSettings(iterations=1), device="cpu", progress=False)
    assert cli_main(["demo", "--out", str(tmp_path), "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user file"
