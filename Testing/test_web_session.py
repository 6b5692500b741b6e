"""DKUXNetSegmentWeb.session on slicer-core: what the page's buttons do, without a browser.

The jobs are real child processes of the stand-in ``Testing/fake_dkuxnet.py`` (as in
``test_slicer_logic.py``), started by the Slicer module's own ``DKUXNetLogic``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dkuxnet.errors import InputError
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.jobs import JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
session_module = pytest.importorskip("DKUXNetSegmentWeb.session")
from DKUXNetSegmentWeb.data_folder import RUNS, DataFolder  # noqa: E402

FAKE = Path(__file__).resolve().parent / "fake_dkuxnet.py"
TIMEOUT = 60


def fake_factory(args):
    return [sys.executable, str(FAKE), *args]


class RecordingViews:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def show_volume(self, node: Any) -> None:
        self.calls.append(("volume", node))

    def show_segmentation(self, node: Any) -> None:
        self.calls.append(("segmentation", node))

    def show_overlay(self, node: Any) -> None:
        self.calls.append(("overlay", node))


def bright_box(seed: int, shape=(8, 12, 10)) -> tuple[Volume, Volume]:
    """An anisotropic, oblique image with a bright box, and the box as its label."""
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 1, shape).astype(np.float32)
    array[2:6, 3:9, 2:7] += 50
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    image = Volume(array=array, spacing=(0.8, 0.9, 2.5), origin=(10, -20, 5), direction=direction)
    return image, image.with_array((array > array.mean()).astype(np.uint8))


@pytest.fixture()
def data(tmp_path: Path) -> DataFolder:
    root = tmp_path / "data"
    for i in range(2):
        image, label = bright_box(i)
        write_volume(image, root / f"case{i}.nrrd")
        write_volume(label, root / "labels" / f"case{i}_label.nrrd")
    write_volume(bright_box(5, shape=(6, 6, 6))[1], root / "labels" / "wrong_grid.nrrd")
    return DataFolder(root)


@pytest.fixture()
def session(scene, data, tmp_path):
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", runs_dir=data.root / RUNS, command_factory=fake_factory
    )
    web = session_module.WebSession(logic, data, RecordingViews())
    web.parameters.model_source, web.parameters.model_path = "file", str(FAKE)  # any file
    return web


def wait(session, task, timeout: float = TIMEOUT) -> JobState:
    deadline = time.monotonic() + timeout
    while not task.state.is_final and time.monotonic() < deadline:
        session.poll()
        time.sleep(0.02)
    session.poll()
    return task.state


# ------------------------------------------------------------------ volumes
def test_load_volume_shows_it_and_loads_each_file_once(session) -> None:
    node = session.load_volume("case0.nrrd")
    assert session.parameters.input_volume is node and node.GetName() == "case0"
    assert session.views.calls == [("volume", node)]
    assert session.load_volume("./case0.nrrd") is node  # the same file, the same node
    assert session.view_state()["volume_name"] == "case0"
    image, _ = bright_box(0)
    from DKUXNetSegmentLib import slicer_bridge

    assert slicer_bridge.volume_from_node(node).same_geometry(image)


def test_paths_outside_the_data_folder_load_nothing(session, data) -> None:
    write_volume(bright_box(9)[0], data.root.parent / "private.nrrd")
    with pytest.raises(InputError, match="outside the data folder"):
        session.load_volume("../private.nrrd")
    with pytest.raises(InputError, match="outside the data folder"):
        session.add_unlabeled(str(data.root.parent / "private.nrrd"))
    assert session.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


def test_bad_upload_message_and_good_upload(session, data) -> None:
    with pytest.raises(InputError, match=r"'scan\.nrrd' is not a readable 3D image"):
        session.upload("scan.nrrd", b"definitely not NRRD")
    node = session.upload("scan.nrrd", (data.root / "case1.nrrd").read_bytes())
    assert node.GetName() == "scan" and session.parameters.input_volume is node
    assert "uploads/scan.nrrd" in data.volumes()


# ------------------------------------------------------------------ Segment
def test_segment_shows_the_result_and_saves_it_on_the_volume_grid(session, data) -> None:
    with pytest.raises(InputError, match="load a volume first"):
        session.segment()
    overlays: list[Any] = []
    session.result_overlays.append(lambda task: overlays.append(task) or "overlay node")
    node = session.load_volume("case0.nrrd")
    task = session.segment()
    assert session.view_state()["segment_running"] is True
    with pytest.raises(InputError, match="already running"):
        session.segment()
    assert wait(session, task) is JobState.COMPLETED, task.error
    state = session.view_state()
    assert state["segment_progress"] == 100 and state["segment_status"].startswith("completed")
    assert state["can_save"] and "on the 10 × 12 × 8 grid of case0" in state["segment_result"]
    assert ("segmentation", task.result) in session.views.calls
    assert session.views.calls[-1] == ("overlay", "overlay node") and overlays == [task]

    saved = session.save_segmentation()
    assert saved == "segmentations/case0_segmentation.nrrd"
    label = read_volume(data.root / saved)
    image, expected = bright_box(0)
    assert label.same_geometry(image)
    np.testing.assert_array_equal(label.array, expected.array)  # what the fake "predicts"
    assert session.save_segmentation() == "segmentations/case0_segmentation_1.nrrd"
    assert node.GetScene() is session.scene


def test_segment_failure_and_cancel_are_messages(session, monkeypatch) -> None:
    session.load_volume("case0.nrrd")
    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    task = session.segment()
    assert wait(session, task) is JobState.FAILED
    assert "model file is corrupt" in session.message
    with pytest.raises(InputError, match="no finished segmentation"):
        session.save_segmentation()

    monkeypatch.delenv("FAKE_DKUXNET_FAIL")
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "5")
    task = session.segment()
    session.cancel_segment()
    assert wait(session, task) is JobState.CANCELLED
    assert session.message == "Segmentation cancelled."


def test_no_model_is_a_message_not_a_crash(session) -> None:
    session.load_volume("case0.nrrd")
    session.parameters.model_source, session.parameters.model_path = "file", "/nope.pt"
    with pytest.raises(InputError, match="not found"):
        session.segment()
    assert session.view_state()["model_text"].startswith("no model")


# ------------------------------------------------------------------ Fine-tune
def test_labeled_pairs_come_from_two_files(session) -> None:
    with pytest.raises(InputError, match="do not share the same geometry"):
        session.add_labeled("case0.nrrd", "labels/wrong_grid.nrrd")
    with pytest.raises(InputError, match="outside the data folder"):
        session.add_labeled("case0.nrrd", "../../etc/passwd")
    pair = session.add_labeled("case0.nrrd", "labels/case0_label.nrrd")
    assert (
        pair.volume.GetName() == "case0" and not pair.segmentation.GetDisplayNode().GetVisibility()
    )
    from DKUXNetSegmentLib import slicer_bridge

    exported = slicer_bridge.export_segment(pair.segmentation, pair.segment_id, pair.volume)
    np.testing.assert_array_equal(exported.array, bright_box(0)[1].array)
    session.add_unlabeled("case1.nrrd")
    session.add_unlabeled("case1.nrrd")  # once
    state = session.view_state()
    assert len(state["labeled"]) == 1 and state["unlabeled"] == ["case1"]
    session.remove_unlabeled(0)
    session.remove_labeled(0)
    assert session.view_state()["labeled"] == [] and session.view_state()["unlabeled"] == []


def test_fine_tune_progress_curves_adopt_then_cancel_and_resume(session, monkeypatch) -> None:
    with pytest.raises(InputError, match="at least one labeled"):
        session.start_fine_tune()
    session.add_labeled("case0.nrrd", "labels/case0_label.nrrd")
    session.add_unlabeled("case1.nrrd")
    session.parameters.iterations = 6
    session.parameters.start_from_current_model = False
    task = session.start_fine_tune()
    assert Path(session.parameters.fine_tune_folder).parent == session.data.root / RUNS
    assert wait(session, task) is JobState.COMPLETED, task.error
    state = session.view_state()
    assert (
        state["fine_tune_progress"] == 100 and "best validation Dice" in state["fine_tune_status"]
    )
    assert state["loss_chart"].count("<polyline") == 3  # total, supervised, consistency
    assert state["dice_chart"].count("<polyline") == 1
    assert session.parameters.model_source == "run"  # Segment now uses the new model
    assert state["model_text"] == f"fine-tuned model {task.run_dir / 'best.pt'}"
    assert not state["can_resume"]

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.2")
    session.parameters.iterations = 30
    task = session.start_fine_tune()
    deadline = time.monotonic() + TIMEOUT
    while task.iteration < 2 and time.monotonic() < deadline:
        session.poll()
        state = session.view_state()
        time.sleep(0.02)
    assert "left" in state["fine_tune_status"]  # the ETA while it runs
    session.cancel_fine_tune()
    assert wait(session, task) is JobState.CANCELLED
    assert session.view_state()["can_resume"] and "Resume" in session.message

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.001")
    resumed = session.resume_fine_tune()
    assert resumed.plots is task.plots  # one history, one chart
    assert wait(session, resumed) is JobState.COMPLETED, resumed.error
    assert resumed.iteration == 30
    with pytest.raises(InputError, match="no stopped fine-tuning run"):
        session.resume_fine_tune()


def test_a_volume_removed_while_segmenting_is_a_message(session, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.3")
    node = session.load_volume("case0.nrrd")
    task = session.segment()
    session.scene.RemoveNode(node)
    assert wait(session, task) is JobState.FAILED
    assert "removed" in session.message and session.view_state()["can_save"] is False
