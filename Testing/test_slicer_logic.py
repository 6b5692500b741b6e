"""DKUXNetSegmentLib.logic on slicer-core, driving a real child process.

The child is ``Testing/fake_dkuxnet.py``, a stand-in that speaks the ``dkuxnet predict|train``
command line and event protocol without a model; it is injected through the logic's
``command_factory``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dkuxnet.errors import InputError
from dkuxnet.io import read_volume
from dkuxnet.jobs import JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")

FAKE = Path(__file__).resolve().parent / "fake_dkuxnet.py"
TIMEOUT = 60


def fake_factory(args):
    return [sys.executable, str(FAKE), *args]


@pytest.fixture()
def logic(scene, tmp_path):
    return logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=fake_factory
    )


def make_volume(scene, name="Patient", shape=(8, 12, 10), seed=0):
    """An oblique, anisotropic volume with a bright box (what the fake 'predicts')."""
    import slicer

    rng = np.random.default_rng(seed)
    array = rng.normal(0, 1, shape).astype(np.float32)
    array[2:6, 3:9, 2:7] += 50
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    m = np.array(
        [[0.0, -0.7, 0.0, 10.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1.0]]
    )
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    return node, (array > array.mean()).astype(np.uint8)


def make_pair(scene, name, seed):
    node, label = make_volume(scene, name, seed=seed)
    seg = bridge.import_label(
        bridge.volume_from_node(node).with_array(label), node, closed_surface=False
    )
    return logic_module.LabeledPair(node, seg, seg.GetSegmentation().GetNthSegmentID(0)), label


def snapshot(node):
    import slicer

    return np.array(slicer.util.arrayFromVolume(node), copy=True), node.GetMTime()


# ------------------------------------------------------------------ helpers
def test_resolve_model(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(InputError, match="best.pt or last.pt"):
        logic_module.resolve_model("run", run)
    (run / "last.pt").write_bytes(b"x")
    assert logic_module.resolve_model("run", run) == run / "last.pt"
    (run / "best.pt").write_bytes(b"x")
    assert logic_module.resolve_model("run", run) == run / "best.pt"
    assert logic_module.resolve_model("file", run / "last.pt") == run / "last.pt"
    with pytest.raises(InputError, match="not found"):
        logic_module.resolve_model("file", run / "nope.pt")
    with pytest.raises(InputError):
        logic_module.resolve_model("file", "")
    parameters_module = pytest.importorskip("DKUXNetSegmentLib.parameters")  # resolve_model's
    monkeypatch.setattr(parameters_module, "default_model_path", lambda: None)
    with pytest.raises(InputError, match="bundled"):
        logic_module.resolve_model("default")
    monkeypatch.setattr(parameters_module, "default_model_path", lambda: run / "best.pt")
    assert logic_module.resolve_model("default") == run / "best.pt"


def test_format_clock_and_missing_packages() -> None:
    assert logic_module.format_clock(62) == "1:02"
    assert logic_module.format_clock(3723) == "1:02:03"
    assert logic_module.format_clock(None) == "" and logic_module.format_clock(math.inf) == ""
    assert logic_module.missing_packages(["numpy", "no_such_package_xyz"]) == [
        "no_such_package_xyz"
    ]


def test_parameters_round_trip_through_the_node(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = logic_module.Parameters(node)
    assert (params.model_source, params.device, params.tta) == ("default", "auto", False)
    assert params.input_volume is None and params.labeled_pairs == []
    vol, _ = make_volume(scene)
    pair, _ = make_pair(scene, "L1", 1)
    extra, _ = make_volume(scene, "U1")
    params.input_volume = vol
    params.model_source, params.model_path, params.device, params.tta = "run", "/r", "cuda", True
    params.iterations = 250
    params.labeled_pairs = [pair]
    params.unlabeled_volumes = [extra, vol]
    again = logic_module.Parameters(node)
    assert again.input_volume is vol and again.output_segmentation is None
    assert (again.model_source, again.model_path, again.device, again.tta) == (
        "run",
        "/r",
        "cuda",
        True,
    )
    assert again.iterations == 250
    assert again.labeled_pairs == [pair]
    assert again.unlabeled_volumes == [extra, vol]
    with pytest.raises(ValueError):
        again.device = "tpu"
    with pytest.raises(ValueError):
        again.model_source = "web"


def test_deleting_a_node_drops_its_pair_and_no_other(scene) -> None:
    """Pairs cannot come apart: before, one reference list per role shifted on deletion."""
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = logic_module.Parameters(node)
    pairs = [make_pair(scene, f"L{i}", i)[0] for i in range(4)]
    params.labeled_pairs = pairs

    scene.RemoveNode(pairs[1].volume)  # a volume from the middle
    assert params.labeled_pairs == [pairs[0], pairs[2], pairs[3]]
    scene.RemoveNode(pairs[2].segmentation)  # a segmentation from the middle
    assert params.labeled_pairs == [pairs[0], pairs[3]]
    for pair in params.labeled_pairs:  # each volume still with its own segmentation
        assert pair.segmentation.GetName() == f"{pair.volume.GetName()} segmentation"

    # writing the list back stores only whole pairs, under fresh indices
    extra = logic_module.LabeledPair(pairs[0].volume, pairs[1].segmentation, pairs[1].segment_id)
    params.labeled_pairs = [*params.labeled_pairs, extra]
    assert len(params.labeled_pairs) == 3
    assert node.GetParameter("LabeledPairCount") == "3"
    assert node.GetNodeReference("LabeledPair3Volume") is None
    params.labeled_pairs = []
    assert params.labeled_pairs == [] and node.GetParameter("LabeledPair0SegmentId") == ""


def test_pairs_survive_saving_and_reloading_the_scene(scene, slicer_module) -> None:
    """References, not node IDs, hold the pairs: loading renames IDs that are taken."""
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DKUXNet parameters")
    pairs = [make_pair(scene, f"L{i}", i)[0] for i in range(2)]
    logic_module.Parameters(node).labeled_pairs = pairs
    scene.SetSaveToXMLString(1)
    scene.Commit()

    other = slicer_module.vtkMRMLScene()
    for i in range(3):  # take the IDs the saved nodes had
        other.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"already here {i}")
        other.AddNewNodeByClass("vtkMRMLSegmentationNode", f"already here {i}")
    other.SetLoadFromXMLString(1)
    other.SetSceneXMLString(scene.GetSceneXMLString())
    other.Import()
    loaded = logic_module.Parameters(other.GetFirstNodeByName("DKUXNet parameters"))
    got = [
        (p.volume.GetName(), p.segmentation.GetName(), p.segment_id) for p in loaded.labeled_pairs
    ]
    want = [(p.volume.GetName(), p.segmentation.GetName(), p.segment_id) for p in pairs]
    assert got == want
    assert loaded.labeled_pairs[0].volume.GetID() != pairs[0].volume.GetID()
    other.Clear(1)


def save_in_the_legacy_format(node, pairs) -> None:
    """What the earlier version wrote: three parallel lists (two n-th reference roles and a
    JSON list of segment IDs)."""
    for i, pair in enumerate(pairs):
        node.SetNthNodeReferenceID("LabeledVolume", i, pair.volume.GetID())
        node.SetNthNodeReferenceID("LabeledSegmentation", i, pair.segmentation.GetID())
    node.SetParameter("LabeledSegmentIds", json.dumps([p.segment_id for p in pairs]))


def reloaded(scene, slicer_module, name: str):
    """The parameter node ``name`` after saving ``scene`` and loading it into a new scene whose
    node IDs are taken (so the loaded references are renamed)."""
    scene.SetSaveToXMLString(1)
    scene.Commit()
    other = slicer_module.vtkMRMLScene()
    for i in range(3):
        other.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"already here {i}")
        other.AddNewNodeByClass("vtkMRMLSegmentationNode", f"already here {i}")
    other.SetLoadFromXMLString(1)
    other.SetSceneXMLString(scene.GetSceneXMLString())
    other.Import()
    return other, other.GetFirstNodeByName(name)


def test_pairs_saved_in_the_earlier_three_list_format_are_read(scene, slicer_module) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DKUXNet parameters")
    pairs = [make_pair(scene, f"L{i}", i)[0] for i in range(3)]
    logic_module.Parameters(node).labeled_pairs = pairs[:1]  # one in the current format too
    save_in_the_legacy_format(node, pairs[1:])
    other, loaded_node = reloaded(scene, slicer_module, "DKUXNet parameters")
    loaded = logic_module.Parameters(loaded_node)
    assert [p.volume.GetName() for p in loaded.labeled_pairs] == ["L0"]  # before converting

    assert loaded.convert_legacy_pairs() is None
    got = [
        (p.volume.GetName(), p.segmentation.GetName(), p.segment_id) for p in loaded.labeled_pairs
    ]
    want = [(p.volume.GetName(), p.segmentation.GetName(), p.segment_id) for p in pairs]
    assert got == want
    assert loaded_node.GetNumberOfNodeReferences("LabeledVolume") == 0
    assert loaded_node.GetNumberOfNodeReferences("LabeledSegmentation") == 0
    assert loaded_node.GetParameter("LabeledSegmentIds") == ""
    assert loaded.convert_legacy_pairs() is None  # nothing left to read
    assert len(loaded.labeled_pairs) == 3
    other.Clear(1)


def test_legacy_pairs_shifted_by_a_deleted_node_are_refused_clearly(scene, slicer_module) -> None:
    """The earlier format's bug: deleting a volume shifted its list against the others."""
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DKUXNet parameters")
    pairs = [make_pair(scene, f"L{i}", i)[0] for i in range(3)]
    save_in_the_legacy_format(node, pairs)
    scene.RemoveNode(pairs[1].volume)  # MRML drops the reference: the volume list shifts
    assert node.GetNumberOfNodeReferences("LabeledVolume") == 2
    other, loaded_node = reloaded(scene, slicer_module, "DKUXNet parameters")
    loaded = logic_module.Parameters(loaded_node)
    message = loaded.convert_legacy_pairs()
    assert message is not None
    assert "cannot be paired up (2 volumes, 3 segmentations, 3 segment IDs" in message
    assert "add the labeled volumes again" in message
    assert loaded.labeled_pairs == []
    assert loaded_node.GetParameter("LabeledSegmentIds") == ""
    assert loaded.convert_legacy_pairs() is None
    other.Clear(1)


# ------------------------------------------------------------------ Segment
def test_segment_creates_new_segmentation_on_the_volume_grid(scene, logic) -> None:
    node, expected = make_volume(scene, "Patient 3")
    before, before_mtime = snapshot(node)
    task = logic.start_segment(node, model="fake.pt", device="cpu", tta=True)
    args = json.loads((task.job.folder / "job.json").read_text())["command"]
    assert "--tta" in args and args[args.index("--device") + 1] == "cpu"
    progress_seen = []
    deadline = time.monotonic() + TIMEOUT
    while not task.state.is_final and time.monotonic() < deadline:
        task.poll()
        if task.progress is not None:
            progress_seen.append(task.progress)
        time.sleep(0.02)
    assert task.state is JobState.COMPLETED, task.error
    assert progress_seen == sorted(progress_seen) and task.progress == 1.0
    seg = task.result
    assert seg is not None and seg.GetName() == "Patient 3 segmentation"
    seg_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    label = bridge.export_segment(seg, seg_id, node)
    np.testing.assert_array_equal(label.array, expected)
    assert label.same_geometry(bridge.volume_from_node(node))
    # the user's volume is untouched; the temporary job folder is gone
    after, after_mtime = snapshot(node)
    np.testing.assert_array_equal(after, before)
    assert after_mtime == before_mtime
    assert not task.job.folder.exists()
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1


def test_segment_replaces_only_the_chosen_segmentation(scene, logic) -> None:
    node, expected = make_volume(scene)
    chosen = bridge.new_segmentation_node(node, "chosen")
    chosen.GetSegmentation().AddEmptySegment("", "Left atrium", [1.0, 0.0, 0.0])
    chosen.GetSegmentation().AddEmptySegment("", "Scar", [0.0, 0.0, 1.0])
    other = bridge.new_segmentation_node(node, "other")
    task = logic.start_segment(node, model="fake.pt", segmentation_node=chosen)
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    assert task.result is chosen
    names = {chosen.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)}
    assert names == {"Left atrium", "Scar"}
    assert other.GetSegmentation().GetNumberOfSegments() == 0


def test_segment_failure_shows_the_child_error(scene, logic, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    node, _ = make_volume(scene)
    task = logic.start_segment(node, model="fake.pt")
    assert task.wait(TIMEOUT) is JobState.FAILED
    assert "model file is corrupt" in task.error
    assert task.result is None and task.job.folder.exists()  # kept for the bug report
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_segment_cancel(scene, logic, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "5")
    node, _ = make_volume(scene)
    task = logic.start_segment(node, model="fake.pt")
    task.cancel(grace_s=2)
    assert task.status == "cancelling"
    assert task.wait(TIMEOUT) is JobState.CANCELLED
    # stopped before the fake's 4 x 5 s of windows were done (not by a wall-clock limit)
    assert not any(e["event"] == "output" for e in task.job.events)
    assert task.result is None
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_segment_rejects_bad_device(scene, logic) -> None:
    node, _ = make_volume(scene)
    with pytest.raises(InputError):
        logic.start_segment(node, model="fake.pt", device="gpu0")


# ------------------------------------------------------------------ Fine-tune
def test_fine_tune_exports_data_plots_progress_and_adopts_model(scene, logic) -> None:
    pair1, label1 = make_pair(scene, "L1", 1)
    pair2, _ = make_pair(scene, "L2", 2)
    unlabeled, _ = make_volume(scene, "U1", seed=3)
    before = snapshot(pair1.volume)
    seg_mtime = pair1.segmentation.GetMTime()
    task = logic.start_fine_tune([pair1, pair2], [unlabeled], iterations=6, init_model="m.pt")

    datalist = json.loads((task.job.folder / "datalist.json").read_text())
    assert len(datalist["training"]) == 2 and len(datalist["unlabeled"]) == 1
    first = datalist["training"][0]
    exported = read_volume(task.job.folder / first["label"])
    np.testing.assert_array_equal(exported.array, label1)
    assert exported.same_geometry(bridge.volume_from_node(pair1.volume))
    command = json.loads((task.job.folder / "job.json").read_text())["command"]
    assert command[command.index("--init") + 1] == "m.pt"

    etas = []
    deadline = time.monotonic() + TIMEOUT
    while not task.state.is_final and time.monotonic() < deadline:
        task.poll()
        etas.append(task.eta_s)
        time.sleep(0.02)
    assert task.state is JobState.COMPLETED, task.error
    assert task.progress == 1.0 and task.iteration == 6
    assert any(eta is not None and eta > 0 for eta in etas) and task.eta_s == 0.0
    assert task.it_per_s == pytest.approx(100.0)  # the fake reports 1 / its sleep
    assert task.model_path == task.run_dir / "best.pt"
    assert "best validation Dice" in task.status

    losses = task.plots.loss_table
    assert losses.GetNumberOfRows() == 6
    column = losses.GetTable().GetColumnByName("total")
    assert [column.GetValue(i) for i in range(6)] == pytest.approx([1 / i for i in range(1, 7)])
    dice = task.plots.dice_table
    assert dice.GetNumberOfRows() == 3
    assert task.plots.loss_chart.GetNumberOfPlotSeriesNodes() == 3  # total, supervised, consistency
    series = task.plots.loss_chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == losses.GetID() and series.GetXColumnName() == "iteration"
    assert task.plots.dice_chart.GetNumberOfPlotSeriesNodes() == 1

    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    logic.adopt_model(task, params)
    assert params.model_source == "run"
    assert logic_module.resolve_model(params.model_source, params.model_path) == task.model_path

    # the user's nodes are untouched
    after = snapshot(pair1.volume)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1] and pair1.segmentation.GetMTime() == seg_mtime
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_fine_tune_adopts_the_best_model_not_the_last(scene, logic, monkeypatch) -> None:
    """Validation Dice 0.5, 0.8, 0.6 (iterations 2, 4, 6): the model of iteration 4 is the one
    Segment uses afterwards, and the status names its Dice."""
    monkeypatch.setenv("FAKE_DKUXNET_DICE", "0.5,0.8,0.6")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=6)
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    assert json.loads((task.run_dir / "last.pt").read_text())["iteration"] == 6
    assert task.model_path == task.run_dir / "best.pt"
    assert json.loads(task.model_path.read_text())["iteration"] == 4
    assert task.best_dice == pytest.approx(0.8) and "best validation Dice 0.800" in task.status
    dice = task.plots.dice_table.GetTable().GetColumnByName("mean Dice")
    assert [dice.GetValue(i) for i in range(3)] == pytest.approx([0.5, 0.8, 0.6])

    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    logic.adopt_model(task, params)
    adopted = logic_module.resolve_model(params.model_source, params.model_path)
    assert json.loads(Path(adopted).read_text()) == {"iteration": 4, "best_metric": 0.8}


def test_fine_tune_that_does_not_beat_its_start_model_keeps_it(scene, logic, monkeypatch) -> None:
    """The trainer validates the start model as iteration 0 (Dice 0.9 here); no later
    validation beats it, so its weights stay in best.pt and the status says so."""
    monkeypatch.setenv("FAKE_DKUXNET_START_DICE", "0.9")
    monkeypatch.setenv("FAKE_DKUXNET_DICE", "0.5,0.8,0.6")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=6, init_model="m.pt")
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    assert json.loads(task.run_dir.joinpath("best.pt").read_text())["iteration"] == 0
    assert task.model_path == task.run_dir / "best.pt" and task.best_iteration == 0
    assert "best validation Dice 0.900 (the start model's" in task.status
    dice = task.plots.dice_table.GetTable().GetColumnByName("mean Dice")
    assert [dice.GetValue(i) for i in range(4)] == pytest.approx([0.9, 0.5, 0.8, 0.6])


def test_fine_tune_cancel_then_resume(scene, logic, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.2")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=30)
    deadline = time.monotonic() + TIMEOUT
    while task.iteration < 3 and time.monotonic() < deadline:
        task.poll()
        time.sleep(0.02)
    task.cancel(grace_s=10)
    assert task.wait(TIMEOUT) is JobState.CANCELLED
    stopped_at = task.iteration
    assert 3 <= stopped_at < 30 and task.model_path is not None
    rows = task.plots.loss_table.GetNumberOfRows()
    assert rows == stopped_at

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.001")
    resumed = logic.resume_fine_tune(task.job.folder, plots=task.plots)
    assert resumed.wait(TIMEOUT) is JobState.COMPLETED, resumed.error
    assert resumed.iteration == 30
    iterations = task.plots.loss_table.GetTable().GetColumnByName("iteration")
    values = [iterations.GetValue(i) for i in range(iterations.GetNumberOfTuples())]
    assert values == list(range(1, 31))  # old history kept, nothing twice

    # a fresh scene (e.g. reloaded) gets the whole history replayed into new plots
    again = logic_module.DKUXNetLogic(scene, jobs_dir=logic.jobs_dir, command_factory=fake_factory)
    plots = logic_module.TrainingPlots(scene, "replayed")
    from dkuxnet.events import read_events

    plots.replay(read_events(task.run_dir / "events.jsonl"))
    assert plots.loss_table.GetNumberOfRows() == 30
    assert again.runs_dir == logic.runs_dir


def test_fine_tune_cancel_needs_no_signal(scene, logic, monkeypatch) -> None:
    """A child deaf to SIGTERM (as a Windows child of Slicer is to CTRL_BREAK) still stops
    after its iteration with last.pt saved: Cancel writes the run's stop file."""
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.1")
    monkeypatch.setenv("FAKE_DKUXNET_IGNORE_SIGTERM", "1")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=300)
    deadline = time.monotonic() + TIMEOUT
    while task.iteration < 2 and time.monotonic() < deadline:
        task.poll()
        time.sleep(0.02)
    task.cancel(grace_s=30)
    assert task.wait(TIMEOUT) is JobState.CANCELLED
    assert (task.run_dir / "stop.request").is_file()
    # stopped by the file: a kill after the 30 s grace would leave a negative returncode
    assert task.job.returncode == 0 and (task.run_dir / "last.pt").is_file()

    # Resume: the trainer removes the old request when it starts, and runs to the end
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.001")
    resumed = logic.resume_fine_tune(task.job.folder, plots=task.plots)
    assert resumed.wait(TIMEOUT) is JobState.COMPLETED, resumed.error
    assert resumed.iteration == 300


def test_fine_tune_cancelled_while_the_child_starts(scene, logic, monkeypatch) -> None:
    """The stop file written before the child read it (no signal: as on Windows) is kept."""
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.05")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=40)
    assert task.job.request_stop()  # the file only; the child is still importing
    assert task.wait(TIMEOUT) is JobState.CANCELLED, task.error
    assert task.iteration == 1


def test_fine_tune_failure_and_bad_inputs(scene, logic, monkeypatch) -> None:
    with pytest.raises(InputError, match="at least one"):
        logic.start_fine_tune([])
    pair, _ = make_pair(scene, "L1", 1)
    empty_seg = bridge.new_segmentation_node(pair.volume, "empty")
    empty_id = empty_seg.GetSegmentation().AddEmptySegment("", "Left atrium", [1.0, 0, 0])
    with pytest.raises(InputError, match="empty"):
        logic.start_fine_tune([logic_module.LabeledPair(pair.volume, empty_seg, empty_id)])
    with pytest.raises(InputError, match="not a fine-tuning folder"):
        logic.resume_fine_tune(logic.jobs_dir)
    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    task = logic.start_fine_tune([pair], iterations=3)
    assert task.wait(TIMEOUT) is JobState.FAILED
    assert task.error == "fake train: out of memory"
    with pytest.raises(InputError):
        logic.adopt_model(
            task, logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
        )


def test_plots_add_columns_lazily(scene) -> None:
    plots = logic_module.TrainingPlots(scene, "lazy")
    plots.add_losses(1, {"a": 1.0})
    plots.add_losses(2, {"a": 0.5, "b": 2.0})
    table = plots.loss_table.GetTable()
    b = table.GetColumnByName("b")
    assert math.isnan(b.GetValue(0)) and b.GetValue(1) == 2.0
    assert plots.loss_chart.GetNumberOfPlotSeriesNodes() == 2
    plots.clear()
    assert plots.loss_table.GetNumberOfRows() == 0


def test_plots_give_their_curves_back_to_other_front_ends(scene) -> None:
    """The web page draws the same numbers from the same nodes (missing values left out)."""
    plots = logic_module.TrainingPlots(scene, "curves")
    assert plots.loss_curves() == {} and plots.dice_curves() == {"mean Dice": []}
    plots.add_losses(1, {"a": 1.0})
    plots.add_losses(2, {"a": 0.5, "b": 2.0})
    plots.add_dice(2, 0.75)
    assert plots.loss_curves() == {"a": [(1.0, 1.0), (2.0, 0.5)], "b": [(2.0, 2.0)]}
    assert plots.dice_curves() == {"mean Dice": [(2.0, 0.75)]}


def test_task_describe_is_the_status_line(scene, logic, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.2")
    pair, _ = make_pair(scene, "L1", 1)
    task = logic.start_fine_tune([pair], iterations=20)
    deadline = time.monotonic() + TIMEOUT
    while task.eta_s is None and time.monotonic() < deadline:
        task.poll()
        time.sleep(0.02)
    line = task.describe()
    # the format, not the clock: on a busy machine the child may take more than 10 s to start
    assert re.fullmatch(r"iteration \d+/20, loss [\d.]+ — elapsed [\d:]+, about [\d:]+ left", line)
    task.cancel(grace_s=10)
    assert task.wait(TIMEOUT) is JobState.CANCELLED
    assert task.describe().startswith("cancelled — elapsed") and "left" not in task.describe()


# ------------------------------------------------------------------ the real `dkuxnet predict`
@pytest.mark.slow
def test_segment_end_to_end_with_real_predict(scene, tmp_path) -> None:
    """Real child (`python -m dkuxnet predict`) with a tiny untrained model: the chain works."""
    torch = pytest.importorskip("torch")
    from tiny import tiny_model_config

    from dkuxnet.checkpoint import save_checkpoint
    from dkuxnet.config import DataConfig, TrainConfig
    from dkuxnet.model import build_model

    model_config = tiny_model_config()
    config = TrainConfig(model=model_config, data=DataConfig(patch_size=(16, 16, 32)))
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(
        {
            "kind": "model",
            "config": config.to_dict(),
            "networks": [build_model(config.model).state_dict() for _ in range(2)],
            "iteration": 0,
        },
        checkpoint,
    )
    node, _ = make_volume(scene, "Real", shape=(12, 20, 18))
    before = snapshot(node)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")  # real command
    task = logic.start_segment(node, checkpoint, device="cpu", keep_folder=True)
    assert task.wait(300) is JobState.COMPLETED, task.error
    assert task.progress == 1.0
    predicted = read_volume(task.output_path)
    seg = task.result
    seg_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Left atrium")
    exported = bridge.export_segment(seg, seg_id, node)
    np.testing.assert_array_equal(exported.array, (predicted.array > 0).astype(np.uint8))
    assert exported.same_geometry(bridge.volume_from_node(node))
    assert any(e["event"] == "progress" for e in task.job.events)
    after = snapshot(node)
    np.testing.assert_array_equal(after[0], before[0])


@pytest.mark.slow
def test_segment_of_bad_inputs_says_what_is_wrong(scene, tmp_path) -> None:
    """What `dkuxnet predict` says reaches the panel: an absurd spacing fails with the one-line
    error, a constant image completes empty with the warning that there is nothing to segment."""
    pytest.importorskip("torch")
    import slicer
    from tiny import save_random_checkpoint, tiny_model_config

    from dkuxnet.config import DataConfig, TrainConfig

    config = TrainConfig(
        model=tiny_model_config(),
        data=DataConfig(patch_size=(16, 16, 32), target_spacing=(1.25, 1.25, 1.25)),
    )
    model = save_random_checkpoint(tmp_path / "resampling.pt", config)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")  # the real command

    broken = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Broken header")
    slicer.util.updateVolumeFromArray(broken, np.random.default_rng(0).normal(size=(16, 20, 24)))
    broken.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1e-6, -1e-6, 1e6, 1.0])))
    task = logic.start_segment(broken, model, device="cpu")
    assert task.wait(300) is JobState.FAILED
    assert "spacing in the file header is probably wrong" in (task.error or "")
    assert task.result is None

    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty series")
    slicer.util.updateVolumeFromArray(empty, np.zeros((10, 12, 14), np.int16))
    task = logic.start_segment(empty, model, device="cpu")
    assert task.wait(300) is JobState.COMPLETED, task.error
    (warning,) = task.warnings
    assert "is constant (every voxel is 0): there is nothing to segment" in warning
    assert f"warning: {warning}" in task.status
    segmentation = task.result.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName("Left atrium")
    assert not bridge.export_segment(task.result, segment_id, empty).array.any()


@pytest.mark.slow
def test_the_self_test_phantom_with_the_bundled_model(scene, tmp_path) -> None:
    """What DKUXNetSegmentTest checks inside Slicer, here on slicer-core with the same chain.

    The bundled model (real LA MRI) undersegments the phantom, so the self-test checks where
    the segment is, not its Dice; this keeps its floor honest whenever the model changes.
    """
    from dkuxnet.resources import default_model_path
    from dkuxnet.synthetic import make_phantom

    model = default_model_path()
    if model is None or logic_module.missing_packages():
        pytest.skip("no bundled model or no torch/monai/SimpleITK")
    image, label = make_phantom((64, 64, 64), seed=7)  # DKUXNetSegmentTest's phantom
    volume_node = bridge.add_volume_node(scene, image, "LA phantom")
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")
    task = logic.start_segment(volume_node, model, device="cpu")
    assert task.wait(600) is JobState.COMPLETED, task.error
    seg = task.result
    seg_id = seg.GetSegmentation().GetSegmentIdBySegmentName(bridge.LEFT_ATRIUM)
    predicted = bridge.export_segment(seg, seg_id, volume_node)
    assert predicted.same_geometry(image), predicted.geometry_differences(image)
    segment, truth = predicted.array > 0, label.array > 0
    inside = np.logical_and(segment, truth).sum()
    assert inside / max(segment.sum(), 1) > 0.9  # INSIDE_FLOOR
    # and not a token few voxels: recall measured 0.098 (236 of 2,401 voxels), floor half that
    assert inside / truth.sum() > 0.05, (inside, segment.sum(), truth.sum())


def test_fine_tune_status_names_who_labels_the_unlabeled_scans(tmp_path: Path) -> None:
    """Pseudo mode's labelling: the start model before the first iteration; the network being
    trained when ``training.pseudo_refresh_every`` labels them again mid-run."""
    from DKUXNetSegmentLib.fine_tune import FineTuneTask

    task = FineTuneTask(job=None, run_dir=tmp_path, plots=None)  # type: ignore[arg-type]
    labelling = {"event": "progress", "stage": "pseudo-labels", "done": 3, "total": 16}
    task._on_event({"event": "started", "total": 100, "resumed_from": 0})
    task._on_event(labelling)
    assert task.status == "labelling the unlabeled scans with the start model: 3/16"
    task._on_event({"event": "started", "total": 100, "resumed_from": 50})  # a resume at 50
    task._on_event(labelling)
    assert task.status == "labelling the unlabeled scans with the network of iteration 50: 3/16"
