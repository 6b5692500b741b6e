"""``dkuxnet predict`` and ``dkuxnet evaluate`` end to end (tiny model, tiny volumes)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import save_random_checkpoint, tiny_model_config

from dkuxnet.cli import main
from dkuxnet.config import DataConfig, TrainConfig
from dkuxnet.events import read_events
from dkuxnet.io import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parent.parent
GEOMETRY = {
    "spacing": (0.9, 1.2, 2.0),
    "origin": (3.0, -7.5, 11.0),
    "direction": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}


def tiny_config(patch: tuple[int, int, int] = (16, 16, 32)) -> TrainConfig:
    model = tiny_model_config()
    return TrainConfig(model=model, data=DataConfig(patch_size=patch))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_config())


def _image(seed: int = 0, shape: tuple[int, int, int] = (12, 14, 20)) -> Volume:
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(np.int16)
    return Volume(array, **GEOMETRY)  # type: ignore[arg-type]


def test_predict_one_file_with_events(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_volume(_image(), tmp_path / "in.nrrd")
    events = tmp_path / "events.jsonl"
    out = tmp_path / "out" / "pred.nii.gz"
    argv = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in.nrrd")]
    argv += ["--output", str(out), "--device", "cpu", "--events", str(events)]
    assert main(argv + ["--probabilities"]) == 0
    pred = read_volume(out)
    assert pred.array.dtype == np.uint8
    assert pred.same_geometry(read_volume(tmp_path / "in.nrrd"))
    prob = read_volume(tmp_path / "out" / "pred_prob.nii.gz")
    assert prob.array.dtype == np.float32 and prob.same_geometry(pred)
    kinds = [e["event"] for e in read_events(events)]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    recorded = read_events(events)
    assert recorded[0]["job"] == "predict" and recorded[0]["total"] == 1
    stages = {e["stage"] for e in recorded if e["event"] == "progress"}
    assert stages == {"reading", "predicting", "writing"}
    assert [e["path"] for e in recorded if e["event"] == "output"] == [str(out)]
    assert recorded[-1]["status"] == "completed"

    # the output exists now: refused, one clear line, nothing touched
    before = out.read_bytes()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert out.read_bytes() == before
    assert main(argv + ["--overwrite", "--networks", "a", "--no-largest-component"]) == 0


def test_predict_folder_checks_every_output_first(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "in").mkdir()
    for i, name in enumerate(["a.nii.gz", "b.nrrd"]):
        write_volume(_image(i), tmp_path / "in" / name)
    write_volume(_image(9), tmp_path / "out" / "b.nrrd")  # exists: nothing may be written
    argv = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in")]
    argv += ["--output", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 1
    assert not (tmp_path / "out" / "a.nii.gz").exists()
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nrrd"]
    for name in ["a.nii.gz", "b.nrrd"]:
        assert read_volume(tmp_path / "out" / name).same_geometry(
            read_volume(tmp_path / "in" / name)
        )


def test_predict_bad_inputs(
    tmp_path: Path,
    checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flat = sitk.GetImageFromArray(np.zeros((10, 12), np.float32))  # a 2D image
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    write_volume(_image(), tmp_path / "in.nrrd")
    torch.save({"conv.weight": torch.randn(2, 2)}, tmp_path / "foreign.pt")

    def predict(*extra: str) -> tuple[int, str]:
        code = main(["predict", "--device", "cpu", *extra])
        return code, capsys.readouterr().err

    code, err = predict(
        "--model",
        str(checkpoint),
        "--input",
        str(tmp_path / "flat.nrrd"),
        "--output",
        str(tmp_path / "o1.nrrd"),
    )
    assert code == 1 and "2D" in err and not (tmp_path / "o1.nrrd").exists()
    code, err = predict(
        "--model",
        str(tmp_path / "foreign.pt"),
        "--input",
        str(tmp_path / "in.nrrd"),
        "--output",
        str(tmp_path / "o2.nrrd"),
    )
    assert code == 1 and "not a DKUXNetSegment checkpoint" in err
    code, err = predict(
        "--model",
        str(tmp_path / "missing.pt"),
        "--input",
        str(tmp_path / "in.nrrd"),
        "--output",
        str(tmp_path / "o3.nrrd"),
    )
    assert code == 1 and "not found" in err
    code, err = predict(
        "--model",
        str(checkpoint),
        "--input",
        str(tmp_path / "in.nrrd"),
        "--output",
        str(tmp_path / "in.nrrd"),
        "--overwrite",
    )
    assert code == 1 and "replace an input" in err
    monkeypatch.setattr("dkuxnet.resources.default_model_path", lambda: None)
    code, err = predict("--input", str(tmp_path / "in.nrrd"), "--output", str(tmp_path / "o4.nrrd"))
    assert code == 1 and "no bundled model" in err
    if not torch.cuda.is_available():
        code, err = predict(
            "--model",
            str(checkpoint),
            "--input",
            str(tmp_path / "in.nrrd"),
            "--output",
            str(tmp_path / "o5.nrrd"),
            "--device",
            "cuda",
        )
        assert code == 1 and "cuda" in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.nrrd", "foreign.pt", "in.nrrd"]


def test_failure_is_recorded_as_a_finished_event(tmp_path: Path, checkpoint: Path) -> None:
    events = tmp_path / "events.jsonl"
    argv = ["predict", "--model", str(tmp_path / "missing.pt"), "--input", str(checkpoint)]
    argv += ["--output", str(tmp_path / "o.nrrd"), "--events", str(events)]
    write_volume(_image(), tmp_path / "in.nrrd")
    argv[4] = str(tmp_path / "in.nrrd")
    assert main(argv) == 1
    last = read_events(events)[-1]
    assert last["event"] == "finished" and last["status"] == "failed"
    assert "not found" in last["error"]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "DKUXNetSegment") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_python_m_dkuxnet_predict_subprocess(tmp_path: Path, checkpoint: Path) -> None:
    write_volume(_image(), tmp_path / "in.nii.gz")
    cmd = [sys.executable, "-m", "dkuxnet", "predict", "--model", str(checkpoint)]
    cmd += ["--input", str(tmp_path / "in.nii.gz"), "--output", str(tmp_path / "out.nii.gz")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_volume(tmp_path / "out.nii.gz").same_geometry(read_volume(tmp_path / "in.nii.gz"))
    again = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().startswith("dkuxnet predict: error:")
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics are POSIX")
def test_sigterm_leaves_no_output(tmp_path: Path, checkpoint: Path) -> None:
    write_volume(_image(shape=(64, 64, 96)), tmp_path / "in.nrrd")  # hundreds of windows
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "dkuxnet", "predict", "--model", str(checkpoint), "--tta"]
    cmd += ["--input", str(tmp_path / "in.nrrd"), "--output", str(tmp_path / "out.nrrd")]
    cmd += ["--events", str(events)]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e.get("stage") == "predicting" for e in read_events(events)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not (tmp_path / "out.nrrd").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "in.nrrd"]
    last = read_events(events)[-1]
    assert last["event"] == "finished" and last["status"] == "cancelled"


# ------------------------------------------------------------------------------ evaluate
def _cube(shift: int = 0) -> np.ndarray:
    array = np.zeros((20, 24, 24), np.uint8)
    array[5:15, 7:17, 7 + shift : 17 + shift] = 1
    return array


def test_evaluate_folders_known_shift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    geometry = {"spacing": (0.5, 1.0, 2.0)}
    for name in ["c1", "c2"]:
        write_volume(Volume(_cube(0), **geometry), tmp_path / "labels" / f"{name}.nii.gz")  # type: ignore[arg-type]
    write_volume(Volume(_cube(2), **geometry), tmp_path / "preds" / "c1.nii.gz")  # type: ignore[arg-type]
    write_volume(Volume(_cube(0), **geometry), tmp_path / "preds" / "c2.nii.gz")  # type: ignore[arg-type]
    argv = ["evaluate", "--predictions", str(tmp_path / "preds"), "--labels"]
    argv += [str(tmp_path / "labels"), "--csv", str(tmp_path / "m.csv"), "--json"]
    argv += [str(tmp_path / "m.json")]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "c1" in table and "mean ± std" in table and "80.00" in table
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["case"] for r in rows] == ["c1", "c2"]
    assert float(rows[0]["dice"]) == pytest.approx(0.8)  # shift 2 of 10 along x
    assert float(rows[0]["jaccard"]) == pytest.approx(8 / 12)
    assert float(rows[1]["dice"]) == pytest.approx(1.0)
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["units"] == "mm"
    assert record["summary"]["dice"]["mean"] == pytest.approx(0.9)
    assert record["cases"][0]["hd95"] == pytest.approx(1.0)  # 2 voxels x 0.5 mm along x
    # voxel units: the same shift is 2 voxels
    assert main(argv[:5] + ["--voxel-units", "--json", str(tmp_path / "v.json")]) == 0
    voxels = json.loads((tmp_path / "v.json").read_text())
    assert voxels["units"] == "voxels" and voxels["cases"][0]["hd95"] == pytest.approx(2.0)
    # an existing report is kept unless --overwrite, and the refusal comes before any scoring
    before = (tmp_path / "v.json").read_bytes()
    assert main(argv[:5] + ["--json", str(tmp_path / "v.json")]) == 1
    assert "report already exists" in capsys.readouterr().err
    assert (tmp_path / "v.json").read_bytes() == before
    assert main(argv[:5] + ["--json", str(tmp_path / "v.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["units"] == "mm"
    same = ["--csv", str(tmp_path / "r"), "--json", str(tmp_path / "r")]
    assert main(argv[:5] + same) == 1
    assert "name the same file" in capsys.readouterr().err


def test_evaluate_refuses_mixed_modes_and_mismatched_geometry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_volume(Volume(_cube(), spacing=(1, 1, 1)), tmp_path / "labels" / "c.nii.gz")
    write_volume(Volume(_cube(), spacing=(1, 1, 3)), tmp_path / "preds" / "c.nii.gz")
    assert main(["evaluate", "--predictions", str(tmp_path / "preds")]) == 1
    assert "go together" in capsys.readouterr().err
    code = main(
        ["evaluate", "--predictions", str(tmp_path / "preds"), "--labels", str(tmp_path / "labels")]
    )
    assert code == 1 and "spacing" in capsys.readouterr().err


def test_evaluate_model_on_dataset(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for i, name in enumerate(["t1", "t2"]):
        write_volume(_image(i), data / "imagesTs" / f"{name}.nii.gz")
        label = np.zeros((12, 14, 20), np.uint8)
        label[3:9, 4:10, 5:15] = 1
        write_volume(_image(i).with_array(label), data / "labelsTs" / f"{name}.nii.gz")
    write_volume(_image(5), data / "imagesTr" / "u1.nii.gz")
    argv = ["evaluate", "--model", str(checkpoint), "--data", str(data), "--device", "cpu"]
    assert main(argv + ["--json", str(tmp_path / "m.json")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert [c["case"] for c in record["cases"]] == ["t1", "t2"]
    assert "t2" in capsys.readouterr().out


def test_score_cases_matches_predict_volume(tmp_path: Path, checkpoint: Path) -> None:
    from dkuxnet.data import Case
    from dkuxnet.inference import Predictor, score_cases
    from dkuxnet.metrics import case_metrics

    label = np.zeros((12, 14, 20), np.uint8)
    label[3:9, 4:10, 5:15] = 1
    cases = []
    for i, name in enumerate(["a", "b"]):
        image_path = write_volume(_image(i), tmp_path / f"{name}.nii.gz")
        label_path = write_volume(_image(i).with_array(label), tmp_path / f"{name}_seg.nii.gz")
        cases.append(Case(name, image_path, label_path))
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    calls: list[tuple[int, int, str]] = []
    rows = score_cases(
        predictor, cases, voxel_units=True, style="medpy", progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 2, "a"), (2, 2, "b")]
    assert [r["case"] for r in rows] == ["a", "b"]
    for i, row in enumerate(rows):  # the same numbers as predicting and scoring by hand
        pred = predictor.predict_volume(_image(i)).label.array
        expected = case_metrics(pred, label, None, style="medpy")
        assert row["dice"] == pytest.approx(expected["dice"])
        assert row["jaccard"] == pytest.approx(expected["jaccard"])
    with pytest.raises(ValueError, match="has no label"):
        score_cases(predictor, [Case("u", cases[0].image, None)])
