"""Uncertainty in the Slicer module (DKUXNetSegmentLib) on slicer-core, with real MRML.

Segment's "Show uncertainty": the map becomes a new scalar volume on the input's exact grid
(oblique direction, parent transform), named after its measure, in colour over the image.
"Suggest next to label": the real ``dkuxnet rank`` child on a tiny model ranks the Fine-tune
panel's unlabeled volumes into a table node, mapped back to the node names.

The real children run with one OpenMP thread: on a 2-core machine that is busy, more threads
than free cores spin against each other.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from dkuxnet.errors import InputError
from dkuxnet.io import Volume, read_volume
from dkuxnet.jobs import JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")

UI_FILE = Path(__file__).resolve().parent.parent / "DKUXNetSegment/Resources/UI/DKUXNetSegment.ui"
TIMEOUT = 300
FAKE = Path(__file__).resolve().parent / "fake_dkuxnet.py"
INFERNO = "vtkMRMLColorTableNodeFileInferno.txt"
IRON = "vtkMRMLColorTableNodeIron"


# ------------------------------------------------------------------ scene helpers
@pytest.fixture()
def colour_scene(scene, slicer_module):
    """A scene with MRML's built-in colour tables (Iron, ...), as colour logic gives them.

    The Slicer application also loads its colour files (Inferno, ...); slicer-core cannot.
    """
    colour_logic = slicer_module.vtkMRMLColorLogic()
    colour_logic.SetMRMLScene(scene)
    yield scene
    colour_logic.SetMRMLScene(None)


def add_inferno(scene, slicer_module) -> None:
    """A colour table with the ID the application gives its Inferno.txt colour file."""
    table = slicer_module.vtkMRMLColorTableNode()
    table.SetSingletonTag("FileInferno.txt")
    table.SetTypeToGrey()
    scene.AddNode(table)
    assert table.GetID() == INFERNO


def slice_views(scene, count: int = 3) -> list:
    """The composite nodes that the application's three slice views would have."""
    return [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(count)]


def oblique_volume_under_transform(
    scene, name: str = "Patient 7", shape=(10, 20, 18), seed=0, noise: float = 20.0
):
    """An anisotropic volume with a rotated (non-identity) direction under a linear transform."""
    import slicer

    rng = np.random.default_rng(seed)
    array = rng.normal(100.0, noise, shape).astype(np.float32)
    array[3:7, 6:14, 5:13] += 120.0  # a bright blob
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    angle = 0.4
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.9, 1.3, 2.5])
    ijk_to_ras[:3, 3] = (12.0, -30.0, 7.5)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{name} registration")
    to_parent = np.eye(4)
    to_parent[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    to_parent[:3, 3] = (5.0, 2.0, -3.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    node.SetAndObserveTransformNodeID(transform.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def world_bounds(node) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)  # in world coordinates: through the parent transform
    return np.array(bounds)


def assert_on_the_grid_of(node, reference) -> None:
    import slicer

    np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(reference))
    assert node.GetTransformNodeID() == reference.GetTransformNodeID() is not None
    assert slicer.util.arrayFromVolume(node).shape == slicer.util.arrayFromVolume(reference).shape
    np.testing.assert_allclose(world_bounds(node), world_bounds(reference), atol=1e-9)


def number_of(scene, class_name: str) -> int:
    return scene.GetNodesByClass(class_name).GetNumberOfItems()


# ------------------------------------------------------------------ tiny models
def tiny_checkpoint(path: Path, networks: int, seed: int = 0) -> Path:
    pytest.importorskip("torch")
    from tiny import save_random_checkpoint, tiny_model_config

    from dkuxnet.config import DataConfig, TrainConfig

    config = TrainConfig(model=tiny_model_config(), data=DataConfig(patch_size=(16, 16, 32)))
    return save_random_checkpoint(path, config, networks=networks, seed=seed)


@pytest.fixture()
def one_thread(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------ the check box
def test_show_uncertainty_is_off_by_default_and_kept_in_the_parameter_node(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = logic_module.Parameters(node)
    assert params.show_uncertainty is False
    params.show_uncertainty = True
    assert node.GetParameter("ShowUncertainty") == "true"
    assert logic_module.Parameters(node).show_uncertainty is True
    params.show_uncertainty = False
    assert logic_module.Parameters(node).show_uncertainty is False

    root = ET.parse(UI_FILE).getroot()
    box = root.find(".//widget[@name='showUncertaintyCheckBox']")
    assert box is not None and box.get("class") == "QCheckBox"
    assert box.findtext("./property[@name='checked']/bool") in (None, "false")
    assert box.findtext("./property[@name='text']/string") == "Show uncertainty"
    segment_section = root.find(".//widget[@name='segmentCollapsibleButton']")
    assert segment_section is not None
    assert segment_section.find(".//widget[@name='showUncertaintyCheckBox']") is not None
    fine_tune = root.find(".//widget[@name='fineTuneCollapsibleButton']")
    assert fine_tune is not None
    button = fine_tune.find(".//widget[@name='suggestNextButton']")
    assert button is not None and button.findtext("./property[@name='text']/string") == (
        "Suggest next to label"
    )


def test_measure_names() -> None:
    name = logic_module.uncertainty_node_name
    assert name("Patient 7", "entropy") == "Patient 7 uncertainty (entropy)"
    assert name("Patient 7", "flip-variance") == "Patient 7 uncertainty (flip variance)"
    assert name("P", "disagreement") == "P uncertainty (disagreement)"
    assert name("P", None) == "P uncertainty (uncertainty)"
    assert logic_module.uncertainty_window(np.array([0.0, 0.1, 0.25])) == (0.0, 0.25)
    low, high = logic_module.uncertainty_window(np.zeros((2, 2, 2)))
    assert low == 0.0 and high > low  # a constant map still gets a valid window
    ranked = logic_module.RankedVolume(1, "vtkMRMLScalarVolumeNode1", "P", math.inf, 0)
    assert ranked.score_text == "nothing segmented"  # the model missed the structure: first
    assert logic_module.RankedVolume(2, "id", "Q", 0.123456, 9).score_text == "0.1235"


# ------------------------------------------------------------------ the map as a volume node
def test_uncertainty_node_geometry_name_colour_and_views(colour_scene, slicer_module) -> None:
    import slicer

    scene = colour_scene
    volume = oblique_volume_under_transform(scene)
    views = slice_views(scene)
    rng = np.random.default_rng(1)
    values = rng.uniform(0.02, 0.2, slicer.util.arrayFromVolume(volume).shape).astype(np.float32)
    values[0, 0, 0], values[-1, -1, -1] = 0.01, 0.23
    exported = bridge.volume_from_node(volume)  # what the child gets, in LPS
    before = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    volumes_before = number_of(scene, "vtkMRMLScalarVolumeNode")

    node = logic_module.show_uncertainty_map(exported.with_array(values), volume, "flip-variance")

    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert node is not volume and number_of(scene, "vtkMRMLScalarVolumeNode") == volumes_before + 1
    assert node.GetName() == "Patient 7 uncertainty (flip variance)"
    assert node.GetAttribute(logic_module.UNCERTAINTY_MEASURE_ATTRIBUTE) == "flip-variance"
    assert_on_the_grid_of(node, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), values)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)  # untouched

    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == IRON  # no Inferno on slicer-core
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(0.01)
    assert display.GetWindowLevelMax() == pytest.approx(0.23)
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.01 + 0.05 * 0.22)
    assert display.GetUpperThreshold() > 0.23
    for view in views:
        assert view.GetBackgroundVolumeID() == volume.GetID()
        assert view.GetForegroundVolumeID() == node.GetID()
        assert view.GetForegroundOpacity() == pytest.approx(logic_module.UNCERTAINTY_OPACITY)
    assert view.GetForegroundOpacity() == pytest.approx(0.5)

    # In the application Inferno is loaded, and it wins; a second map is another new node.
    add_inferno(scene, slicer_module)
    again = logic_module.show_uncertainty_map(exported.with_array(values), volume, "entropy")
    assert again.GetID() != node.GetID()
    assert again.GetName() == "Patient 7 uncertainty (entropy)"
    assert again.GetDisplayNode().GetColorNodeID() == INFERNO
    assert all(view.GetForegroundVolumeID() == again.GetID() for view in views)


def test_segment_without_uncertainty_takes_old_maps_off_the_views(
    colour_scene, tmp_path: Path
) -> None:
    """No map stays drawn over a volume it was not computed for; the map node is kept."""
    scene = colour_scene
    first = oblique_volume_under_transform(scene, "First")
    second = oblique_volume_under_transform(scene, "Second", seed=5)
    views = slice_views(scene, 2)
    exported = bridge.volume_from_node(first)
    shown = logic_module.show_uncertainty_map(exported, first, "entropy")
    assert all(view.GetForegroundVolumeID() == shown.GetID() for view in views)
    views[1].SetForegroundVolumeID(second.GetID())  # the user's own overlay stays

    def stand_in(args):  # Testing/fake_dkuxnet.py: speaks `dkuxnet predict` without a model
        return [sys.executable, str(FAKE), *args]

    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs", command_factory=stand_in)
    task = logic.start_segment(second, model="fake.pt")
    assert "--uncertainty" not in task.job.command
    assert task.wait(60) is JobState.COMPLETED, task.error
    assert task.uncertainty_result is None and task.result is not None
    assert views[0].GetForegroundVolumeID() is None
    assert views[1].GetForegroundVolumeID() == second.GetID()
    assert scene.GetNodeByID(shown.GetID()) is shown


def test_a_map_off_the_volume_grid_is_refused(colour_scene) -> None:
    scene = colour_scene
    volume = oblique_volume_under_transform(scene)
    exported = bridge.volume_from_node(volume)
    shifted = Volume(
        exported.array,
        spacing=exported.spacing,
        origin=tuple(o + 5.0 for o in exported.origin),
        direction=exported.direction,
    )
    count = number_of(scene, "vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="origin"):
        logic_module.show_uncertainty_map(shifted, volume, "entropy")
    with pytest.raises(ValueError, match="size"):
        logic_module.show_uncertainty_map(Volume(exported.array[:-1]), volume, "entropy")
    assert number_of(scene, "vtkMRMLScalarVolumeNode") == count


# ------------------------------------------------------------------ Segment with the real child
@pytest.mark.slow
def test_segment_shows_the_flip_variance_of_one_network_with_tta(
    colour_scene, tmp_path: Path, one_thread
) -> None:
    """The bundled model's case: one network, so the map is the variance over TTA flips."""
    import slicer

    scene = colour_scene
    checkpoint = tiny_checkpoint(tmp_path / "single.pt", networks=1)
    volume = oblique_volume_under_transform(scene, "Patient 7")
    views = slice_views(scene)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")  # real command
    task = logic.start_segment(
        volume, checkpoint, device="cpu", tta=True, keep_folder=True, uncertainty=True
    )
    assert "--uncertainty" in task.job.command and "--tta" in task.job.command
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    assert task.uncertainty_measure == "flip-variance"
    node = task.uncertainty_result
    assert node is not None and node.GetName() == "Patient 7 uncertainty (flip variance)"
    assert_on_the_grid_of(node, volume)
    written = read_volume(task.job.folder / "uncertainty.nrrd")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), written.array)
    assert written.array.min() >= 0.0 and written.array.max() <= 0.25  # a variance of p
    assert node.GetDisplayNode().GetColorNodeID() == IRON
    assert views[0].GetForegroundVolumeID() == node.GetID()
    assert task.result is not None  # the segmentation as before
    assert "uncertainty: Patient 7 uncertainty (flip variance)" in task.status


@pytest.mark.slow
def test_segment_uncertainty_with_one_network_and_no_tta_says_why(
    scene, tmp_path: Path, one_thread
) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "single.pt", networks=1)
    volume = oblique_volume_under_transform(scene)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")
    task = logic.start_segment(volume, checkpoint, device="cpu", uncertainty=True)
    assert task.wait(TIMEOUT) is JobState.FAILED
    assert "--tta" in task.error and "'Test-time augmentation' check box" in task.error
    assert task.result is None and task.uncertainty_result is None
    assert number_of(scene, "vtkMRMLSegmentationNode") == 0
    assert number_of(scene, "vtkMRMLScalarVolumeNode") == 1


# ------------------------------------------------------------------ Suggest next to label
def test_ranking_needs_unlabeled_volumes(scene, tmp_path: Path) -> None:
    recorded: list[list[str]] = []
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=lambda a: recorded.append(a) or []
    )
    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    assert params.unlabeled_volumes == []
    with pytest.raises(InputError, match="no unlabeled volumes") as raised:
        logic.start_rank(params.unlabeled_volumes, tmp_path / "model.pt")
    assert "Unlabeled volume" in str(raised.value) and "Fine-tune" in str(raised.value)
    volume = oblique_volume_under_transform(scene)
    with pytest.raises(InputError, match="device"):
        logic.start_rank([volume], tmp_path / "model.pt", device="gpu0")
    assert recorded == [] and not (tmp_path / "jobs").exists()  # nothing started or exported
    assert number_of(scene, "vtkMRMLTableNode") == 0


def expected_ranking(checkpoint: Path, volumes) -> list[tuple[str, float]]:
    """Each volume scored in this process, as `dkuxnet rank` scores the exported file."""
    from dkuxnet.inference import Predictor, region_score

    predictor = Predictor.from_checkpoint(checkpoint, "cpu", uncertainty="disagreement")
    scored = []
    for node in volumes:
        result = predictor.predict_volume(bridge.volume_from_node(node))
        assert result.uncertainty is not None
        scored.append((node.GetName(), region_score(result.label.array, result.uncertainty.array)))
    return sorted(scored, key=lambda item: -item[1])  # stable, as the ranking


@pytest.mark.slow
def test_suggest_next_ranks_the_unlabeled_volumes_into_a_table(
    scene, tmp_path: Path, one_thread
) -> None:
    # Seed 4: the random dual model scores these scans 0.073, 0.080 and 0.092 (disagreement,
    # the ranking default for a dual model; fg + 3 voxels), apart far beyond the numeric noise
    # between two processes, and not in input order. An untrained model's scores say nothing about the scans; the order is the test.
    checkpoint = tiny_checkpoint(tmp_path / "dual.pt", networks=2, seed=4)
    volumes = [  # one with its blob buried in noise
        oblique_volume_under_transform(scene, name, seed=seed, noise=noise)
        for name, seed, noise in (("Scan A", 1, 20.0), ("Scan B", 2, 90.0), ("Scan C", 3, 40.0))
    ]
    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    params.unlabeled_volumes = volumes
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")  # real command

    task = logic.start_rank(params.unlabeled_volumes, checkpoint, device="cpu")
    assert task.status == "ranking…"
    volumes[0].SetName("Scan A renamed")  # rows map back to the nodes, not to the old names
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    events = [e["event"] for e in task.job.events]
    assert events[0] == "started" and events[-1] == "finished"
    assert events.count("progress") == 3 and task.progress == 1.0
    assert task.uncertainty_measure == "disagreement"  # a dual model's ranking default

    expected = expected_ranking(checkpoint, volumes)
    gaps = [a[1] - b[1] for a, b in zip(expected, expected[1:], strict=False)]
    assert min(gaps) > 1e-3, expected  # a clear order to check (see the seed above)
    assert [r.name for r in task.ranking] == [name for name, _ in expected]
    assert [r.name for r in task.ranking] == ["Scan C", "Scan B", "Scan A renamed"]
    assert [r.rank for r in task.ranking] == [1, 2, 3]
    for row, (_, score) in zip(task.ranking, expected, strict=True):
        assert row.score == pytest.approx(score, rel=1e-3)  # two processes, two thread pools
    scores = [r.score for r in task.ranking]
    assert scores == sorted(scores, reverse=True)
    by_name = {v.GetName(): v.GetID() for v in volumes}
    assert all(r.node_id == by_name[r.name] for r in task.ranking)

    table = task.table
    assert table is not None and table.IsA("vtkMRMLTableNode")
    assert table.GetName() == "DKUXNet next to label"
    assert table.GetNumberOfRows() == 3
    assert [table.GetCellText(i, 1) for i in range(3)] == [r.name for r in task.ranking]
    column = table.GetTable().GetColumnByName("score")
    assert [column.GetValue(i) for i in range(3)] == pytest.approx(scores)
    assert table.GetColumnTitle("score") == "score (disagreement)"
    assert task.status.startswith("3 volume(s) ranked by disagreement")
    assert f"label {task.ranking[0].name} next" in task.status
    assert not task.job.folder.exists()  # the CSV was read; nothing to keep

    # the next ranking rewrites the same table
    assert logic.ranking_table() is table
    logic_module.fill_ranking_table(table, task.ranking[:1], "flip-variance")
    assert table.GetNumberOfRows() == 1 and table.GetNumberOfColumns() == 4
    assert table.GetColumnTitle("score") == "score (flip variance)"
    assert number_of(scene, "vtkMRMLTableNode") == 1


@pytest.mark.slow
def test_ranking_with_one_network_and_no_tta_says_why(scene, tmp_path: Path, one_thread) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "single.pt", networks=1)
    volume = oblique_volume_under_transform(scene)
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")
    task = logic.start_rank([volume], checkpoint, device="cpu")
    assert task.wait(TIMEOUT) is JobState.FAILED
    assert "--tta" in task.error and "'Test-time augmentation' check box" in task.error
    assert task.table is None and task.ranking == []
    assert task.job.folder.exists()  # kept for the bug report
    assert number_of(scene, "vtkMRMLTableNode") == 0
