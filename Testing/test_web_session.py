"""DKUXNetSegmentWeb.session on slicer-core: what the page's buttons do, without a browser.

The jobs are real child processes of the stand-in ``Testing/fake_dkuxnet.py`` (as in
``test_slicer_logic.py``), started by the Slicer module's own ``DKUXNetLogic``; the region of
interest and the warnings use :data:`ROI_STAND_IN`, which does what ``dkuxnet predict`` does
with ``--roi`` and the model's recorded label volumes, with the core's own functions.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from DKUXNetSegmentLib.controller import View  # noqa: E402
from DKUXNetSegmentWeb.data_folder import RUNS, DataFolder  # noqa: E402

FAKE = Path(__file__).resolve().parent / "fake_dkuxnet.py"
TIMEOUT = 60
# A stand-in for `dkuxnet predict` whose "model" calls every voxel atrium: as the real command
# (commands/predict.py), it segments only the voxel box that the core's box_from_corners makes
# of --roi, and emits the core's volume_warning for the label volumes its model was trained on
# (STAND_IN_LABEL_ML="smallest,largest" ml; none: only an empty result is reported).
ROI_STAND_IN = """
import argparse
import os

import numpy as np

from dkuxnet.events import EventWriter
from dkuxnet.io import read_volume, write_volume

parser = argparse.ArgumentParser()
parser.add_argument("command")
for option in ("--model", "--input", "--output", "--device", "--events", "--roi"):
    parser.add_argument(option)
parser.add_argument("--tta", action="store_true")
args = parser.parse_args()
events = EventWriter(args.events)
events.emit("started", job="predict", total=1, device="cpu", resumed_from=0)
image = read_volume(args.input)
label = np.ones(image.array.shape, np.uint8)
if args.roi:
    from dkuxnet.inference.roi import box_from_corners, parse_roi

    from dkuxnet.errors import DKUXNetError

    try:
        box = box_from_corners(image, parse_roi(args.roi))
    except DKUXNetError as exc:  # as the real command reports it (dkuxnet.cli)
        events.emit("finished", status="failed", error=str(exc))
        raise SystemExit(2) from None
    if box is not None:
        label[:] = 0
        label[box] = 1
from dkuxnet.inference.roi import volume_warning

expected = os.environ.get("STAND_IN_LABEL_ML")
expected_ml = [float(v) for v in expected.split(",")] if expected else None
warning = volume_warning(image.with_array(label), expected_ml, "input's segmentation")
if warning is not None:
    events.emit("warning", case="input", message=warning)
write_volume(image.with_array(label), args.output)
events.emit("output", path=args.output, case="input")
events.emit("finished", status="completed", error=None)
"""


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


def straight_volume() -> Volume:
    """An axis-aligned, anisotropic image (LPS origin (10, -20, 5)): voxel (i, j, k) is centred
    at RAS (-10 - 0.8 i, 20 - 0.9 j, 5 + 2.5 k)."""
    array = np.random.default_rng(3).normal(0, 1, (8, 12, 10)).astype(np.float32)
    return Volume(array=array, spacing=(0.8, 0.9, 2.5), origin=(10, -20, 5))


@pytest.fixture()
def data(tmp_path: Path) -> DataFolder:
    root = tmp_path / "data"
    for i in range(2):
        image, label = bright_box(i)
        write_volume(image, root / f"case{i}.nrrd")
        write_volume(label, root / "labels" / f"case{i}_label.nrrd")
    write_volume(bright_box(5, shape=(6, 6, 6))[1], root / "labels" / "wrong_grid.nrrd")
    write_volume(straight_volume(), root / "straight.nrrd")
    return DataFolder(root)


@pytest.fixture()
def session(scene, data, tmp_path):
    logic = logic_module.DKUXNetLogic(
        scene,
        jobs_dir=tmp_path / "jobs",
        runs_dir=data.root / RUNS,
        command_factory=fake_factory,
        panel_words=session_module.PAGE_WORDS,  # as the app makes it
    )
    web = session_module.WebSession(logic, data, RecordingViews())
    web.parameters.model_source, web.parameters.model_path = "file", str(FAKE)  # any file
    return web


@pytest.fixture()
def roi_session(session, tmp_path: Path):
    """The session with :data:`ROI_STAND_IN` as ``dkuxnet``."""
    script = tmp_path / "roi_stand_in.py"
    script.write_text(ROI_STAND_IN)
    session.logic.command_factory = lambda args: [sys.executable, str(script), *args]
    return session


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


# ------------------------------------------------------------------ region of interest
def roi_nodes(session) -> list[Any]:
    nodes = session.scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1,2,3,4,5", "expected six numbers R1,A1,S1,R2,A2,S2"),
        ("1,2,3,4,5,six", "expected six numbers"),
        ("1,2,3,4,5,nan", "expected six numbers"),
        ("-12,17,16,-15,13.5,16", "no extent along at least one axis"),
    ],
)
def test_a_bad_region_of_interest_starts_nothing(session, tmp_path, text, problem) -> None:
    session.load_volume("straight.nrrd")
    session.roi_text = text
    with pytest.raises(InputError, match=problem) as raised:
        session.segment()
    assert f"region of interest {text!r}" in str(raised.value)
    assert session.segment_task is None and not (tmp_path / "jobs").exists()
    assert roi_nodes(session) == [] and session.parameters.roi is None


def test_segment_with_a_region_of_interest_is_background_outside_it(roi_session, data) -> None:
    """The box's faces are 0.1 to 1 mm from every voxel centre and voxel boundary; the corners
    are typed in any order, with spaces."""
    from test_slicer_roi import in_box, voxel_centres
    from test_slicer_uncertainty import ijk_to_ras

    from DKUXNetSegmentLib import slicer_bridge

    session = roi_session
    volume = session.load_volume("straight.nrrd")
    session.roi_text = "-12.1, 17, 16, -15.3, 13.5, 9"
    task = session.segment()
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert session.message == "Segmentation finished."  # no warning
    box = (-15.3, 13.5, 9.0, -12.1, 17.0, 16.0)  # low corner, high corner
    (roi,) = roi_nodes(session)
    assert roi.GetName() == session_module.ROI_NODE_NAME and session.parameters.roi is roi
    assert slicer_bridge.roi_bounds_in_volume_frame(roi, volume) == pytest.approx(box)
    (roi_arg,) = [a for a in task.job.command if a.startswith("--roi=")]  # its eight corners
    corners = np.reshape([float(v) for v in roi_arg[len("--roi=") :].split(",")], (8, 3))
    assert {tuple(c) for c in corners.tolist()} == set(
        itertools.product((-15.3, -12.1), (13.5, 17.0), (9.0, 16.0))
    )
    # A voxel is predicted exactly when it meets the box: its centre is within half a voxel.
    local, _ = voxel_centres(volume)
    half_voxel = np.abs(ijk_to_ras(volume)[:3, :3]).sum(axis=1) / 2
    label = read_volume(data.root / session.save_segmentation())
    near_box = in_box(local, box, margin=half_voxel).reshape(label.array.shape)
    assert 0 < near_box.sum() < near_box.size
    np.testing.assert_array_equal(label.array, near_box.astype(np.uint8))

    # one ROI node per session: a new box moves it; no box segments the whole image
    session.roi_text = "-11,19,6,-16,11,21"
    task = session.segment()
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert roi_nodes(session) == [roi]
    assert slicer_bridge.roi_bounds_in_volume_frame(roi, volume) == pytest.approx(
        (-16, 11, 6, -11, 19, 21)
    )
    session.roi_text = " "
    task = session.segment()
    assert session.parameters.roi is None
    assert not any(a.startswith("--roi") for a in task.job.command)
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert read_volume(data.root / session.save_segmentation()).array.all()


def test_a_box_off_the_image_fails_in_the_pages_words(roi_session) -> None:
    session = roi_session
    session.load_volume("straight.nrrd")
    session.roi_text = "500,500,500,510,510,510"
    task = session.segment()
    assert wait(session, task) is JobState.FAILED
    assert "does not overlap the image" in session.message
    assert session.message.endswith(session_module.PAGE_WORDS["region of interest"])
    assert "In this panel" not in session.message  # the Slicer panel's words are not the page's
    assert session.view_state()["can_save"] is False


def test_the_predictions_warnings_are_in_the_message(roi_session, monkeypatch) -> None:
    """A model trained on 1-2 µl labels: the whole image (1.7 ml) is implausibly large."""
    session = roi_session
    monkeypatch.setenv("STAND_IN_LABEL_ML", "0.001,0.002")
    session.load_volume("straight.nrrd")
    task = session.segment()
    assert wait(session, task) is JobState.COMPLETED, task.error
    (warning,) = task.warnings
    assert "input's segmentation is 2 ml, more than 2 times the largest" in warning
    assert session.message == f"Segmentation finished. Warning: {warning}"
    assert "region of interest around the heart" in session.view_state()["message"]
    assert session.view_state()["can_save"]  # a warning does not stop the result


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


def test_the_page_may_start_what_the_controller_allows(session, monkeypatch) -> None:
    """The page's buttons are enabled by the controller view's ``can_*`` values, as the Slicer
    panel's are: no Fine-tune without a labeled pair, no second estimate while one runs."""
    names = [f.name for f in dataclasses.fields(View) if f.name.startswith("can_")]

    def may() -> dict[str, bool]:
        state, view = session.view_state(), session.controller.view()
        assert {name: state[name] for name in names} == {n: getattr(view, n) for n in names}
        return {name: state[name] for name in names}

    assert may() == {
        "can_segment": False,  # no volume
        "can_place_box": False,
        "can_rank": True,  # starting says what to do
        "can_fine_tune": False,  # no labeled pair
        "can_resume": False,
        "can_estimate": True,
    }
    session.load_volume("case0.nrrd")
    session.add_labeled("case0.nrrd", "labels/case0_label.nrrd")
    assert may()["can_segment"] and may()["can_place_box"] and may()["can_fine_tune"]

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.3")
    task = session.estimate_time()
    assert may()["can_estimate"] is False and may()["can_fine_tune"]
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert may()["can_estimate"] is True
    task = session.segment()
    assert not may()["can_segment"] and not may()["can_place_box"]
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert may()["can_segment"]


def test_a_volume_removed_while_segmenting_is_a_message(session, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.3")
    node = session.load_volume("case0.nrrd")
    task = session.segment()
    session.scene.RemoveNode(node)
    assert wait(session, task) is JobState.FAILED
    assert "removed" in session.message and session.view_state()["can_save"] is False


# ------------------------------------------------------------------ what the page gained
def test_the_page_suggests_what_to_label_next_and_shows_it(session) -> None:
    """Suggest next to label was the panel's only; both render the same controller now."""
    with pytest.raises(InputError, match="no unlabeled volumes to rank"):
        session.suggest_next()
    session.add_unlabeled("case0.nrrd")
    straight = session.add_unlabeled("straight.nrrd")
    task = session.suggest_next()
    assert session.view_state()["rank_running"] is True
    assert wait(session, task) is JobState.COMPLETED, task.error
    state = session.view_state()
    assert state["rank_running"] is False and state["rank_status"].startswith("2 volume(s)")
    first, second = state["ranking"]  # the brighter box first (the fake's score: the mean)
    assert first.startswith("1. case0: ") and second.startswith("2. straight: ")
    assert session.message.endswith("label case0 next.")
    session.show_ranked(1)
    assert session.views.calls[-1] == ("volume", straight)


def test_place_box_advice_and_the_uncertainty_map_on_the_page(session, data) -> None:
    """A scan of the whole chest: the page says so in its words, and Place box fills the
    region-of-interest field with a box it can edit; Show uncertainty reaches Segment."""
    whole = Volume(np.zeros((22, 72, 72), np.float32), (5.0, 5.0, 2.5), (0, 0, 0))  # 360 mm
    write_volume(whole, data.root / "chest.nrrd")
    session.load_volume("chest.nrrd")
    advice = session.view_state()["region_advice"]
    assert advice.endswith(session_module.PAGE_PLACE_BOX_WORDS["field_of_view"])
    text = session.place_box()
    assert session.roi_text == text and session.view_state()["region_advice"] == ""
    corners = np.reshape([float(v) for v in text.split(",")], (2, 3))
    np.testing.assert_allclose(corners[1] - corners[0], (120, 90, 55), atol=0.1)  # a crop
    (roi,) = roi_nodes(session)
    assert session.parameters.roi is roi and roi.GetName() == session_module.ROI_NODE_NAME
    session.roi_text = text  # typed back as it is: the same box in the same node
    assert roi_nodes(session) == [roi] and session.parameters.roi is roi

    session.load_volume("case0.nrrd")
    session.roi_text = ""
    session.parameters.show_uncertainty = True
    task = session.segment()
    assert "--uncertainty" in task.job.command
    assert wait(session, task) is JobState.COMPLETED, task.error
    assert ("overlay", task.uncertainty_result) in session.views.calls
