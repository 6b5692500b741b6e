"""Estimate time (DKUXNetSegmentLib.logic) on slicer-core: `dkuxnet estimate` as a background job.

The measurement runs the real child (`python -m dkuxnet estimate`) on a tiny checkpoint, so it
takes seconds; the recipe, cancel and parsing tests use a stand-in child that prints one line.
"""

from __future__ import annotations

import inspect
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dkuxnet.errors import InputError
from dkuxnet.jobs import JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")

UI_FILE = Path(__file__).resolve().parent.parent / "DKUXNetSegment/Resources/UI/DKUXNetSegment.ui"
TIMEOUT = 300
ESTIMATE_LINE = '{"s_per_iteration": 2.0, "iterations": 5, "device": "cpu", "precision": "float32"}'


def printing_factory(recorded: list[list[str]], code: str = f"print({ESTIMATE_LINE!r})"):
    """A command factory that records the dkuxnet arguments and runs ``python -c CODE``."""

    def factory(args):
        recorded.append(list(args))
        return [sys.executable, "-c", code]

    return factory


def fine_tune_params(scene, model: Path | None, device: str = "cpu", iterations: int = 100):
    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    params.model_source, params.model_path = "file", str(model or "")
    params.start_from_current_model = model is not None
    params.device, params.iterations = device, iterations
    return params


def labeled_pair(scene):
    """A small volume with a non-empty left-atrium segment."""
    import numpy as np
    import slicer

    bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "L1")
    slicer.util.updateVolumeFromArray(node, np.zeros((6, 8, 8), np.float32))
    label = np.zeros((6, 8, 8), np.uint8)
    label[2:4, 2:6, 2:6] = 1
    volume = bridge.volume_from_node(node)
    seg = bridge.import_label(volume.with_array(label), node, closed_surface=False)
    return logic_module.LabeledPair(node, seg, seg.GetSegmentation().GetNthSegmentID(0))


@pytest.fixture()
def tiny_checkpoint(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    from tiny import save_random_checkpoint, tiny_model_config

    from dkuxnet.config import DataConfig, TrainConfig

    config = TrainConfig(model=tiny_model_config(), data=DataConfig(patch_size=(16, 16, 32)))
    return save_random_checkpoint(tmp_path / "tiny.pt", config)


# ------------------------------------------------------------------ the default and the text
def test_one_default_iteration_count_for_node_logic_and_panel(scene) -> None:
    default = logic_module.DEFAULT_FINE_TUNE_ITERATIONS
    assert default == 100
    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    assert params.iterations == default
    signature = inspect.signature(logic_module.DKUXNetLogic.start_fine_tune)
    assert signature.parameters["iterations"].default == default
    spin_box = ET.parse(UI_FILE).getroot().find(".//widget[@name='iterationsSpinBox']")
    assert spin_box is not None
    assert spin_box.findtext("./property[@name='value']/number") == str(default)


def test_the_panel_text() -> None:
    estimate = logic_module.TimeEstimate(3.4, "cpu", "bfloat16")
    assert estimate.total_s(250) == pytest.approx(850.0)
    assert estimate.describe(250) == (
        "Expected: about 14 min for 250 iterations "
        "(3.4 s per iteration, measured on this machine, cpu, bfloat16)"
    )
    fast = logic_module.TimeEstimate(0.25, "cuda", "float16")
    assert fast.describe(100) == (
        "Expected: under a minute for 100 iterations "
        "(0.25 s per iteration, measured on this machine, cuda, float16)"
    )
    assert fast.describe(20000).startswith("Expected: about 1 h 23 min for 20000 iterations")
    busy = logic_module.TimeEstimate.from_output(
        '{"s_per_iteration": 2.0, "device": "cpu", "precision": "float32", '
        '"busy": "the CPU is busy (load 3.4 on 2 cores)"}\n'
    )
    assert busy.describe(10).endswith("float32); note: the CPU is busy (load 3.4 on 2 cores)")


def test_the_panel_text_counts_the_labelling_of_the_unlabeled_volumes() -> None:
    """Pseudo mode labels each unlabeled volume first; the estimate adds its windows' time."""
    measured = logic_module.TimeEstimate.from_output(
        '{"s_per_iteration": 2.0, "device": "cpu", "precision": "float32", "s_per_window": 0.5,'
        ' "patch_size": [32, 64, 80], "target_spacing": [1.25, 1.25, 1.25], "overlap": 0.5}\n'
    )
    # 320 x 200 x 100 voxels of 0.625 mm -> 160 x 100 x 50 at 1.25 mm; (z, y, x) windows of
    # 32 x 64 x 80 with steps 16 / 32 / 40: z 1 + ceil(18 / 16) = 3, y 1 + ceil(36 / 32) = 3,
    # x 1 + ceil(80 / 40) = 3: 27 windows, 13.5 s; two such volumes 27 s
    scan = ((320, 200, 100), (0.625, 0.625, 0.625))
    assert measured.labelling_s([scan]) == pytest.approx(13.5)
    assert measured.labelling_s([scan, scan]) == pytest.approx(27.0)
    assert measured.describe(250, 27.0, 2) == (
        "Expected: about 9 min for 250 iterations (2.0 s per iteration, labelling 2 unlabeled "
        "volume(s) first: 27 s, measured on this machine, cpu, float32)"
    )
    without = logic_module.TimeEstimate(2.0, "cpu", "float32")  # not pseudo mode: nothing to add
    assert without.labelling_s([scan]) == 0.0
    assert without.describe(250, 0.0, 0) == without.describe(250)


def test_the_labelling_estimate_imports_no_torch_into_slicers_process() -> None:
    """The panel computes it in Slicer's own process, where torch is never imported."""
    import subprocess

    code = (
        "import sys; from DKUXNetSegmentLib.estimate import TimeEstimate; "
        "t = TimeEstimate(2.0, 'cpu', 'float32', None, 0.5, (32, 64, 80), (1.25,) * 3); "
        "print(t.labelling_s([((320, 200, 100), (0.625,) * 3)]), 'torch' in sys.modules)"
    )
    module_dir = Path(logic_module.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=module_dir, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["13.5", "False"]


def test_the_panel_adds_the_labelling_of_its_listed_unlabeled_volumes(scene, tmp_path) -> None:
    import numpy as np
    import slicer

    line = (
        '{"s_per_iteration": 2.0, "device": "cpu", "precision": "float32", "s_per_window": 0.5, '
        '"patch_size": [32, 64, 80], "target_spacing": [1.25, 1.25, 1.25], "overlap": 0.5}'
    )
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=printing_factory([], f"print({line!r})")
    )
    model = tmp_path / "model.pt"
    model.write_bytes(b"")  # the panel checks that the start model exists
    task = logic.start_estimate(model, 250, "cpu")
    assert task.wait(60) is JobState.COMPLETED, task.error
    params = fine_tune_params(scene, model, "cpu", iterations=250)
    assert logic.estimate_text(params) == task.result.describe(250)  # no unlabeled volume yet
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "U1")
    slicer.util.updateVolumeFromArray(node, np.zeros((100, 200, 320), np.float32))  # (z, y, x)
    node.SetSpacing(0.625, 0.625, 0.625)
    params.unlabeled_volumes = [node]
    assert logic.estimate_text(params) == task.result.describe(250, 13.5, 1)  # 27 windows


def test_the_result_is_the_last_json_line_of_the_output() -> None:
    output = (
        f"$ python -m dkuxnet estimate\ninitialised 2 network(s)\n{{not json\n{ESTIMATE_LINE}\n"
    )
    assert logic_module.TimeEstimate.from_output(output) == logic_module.TimeEstimate(
        2.0, "cpu", "float32"
    )
    for bad in ("", "initialised 2 network(s)\n", '{"s_per_iteration": 0}\n', "[1, 2]\n"):
        with pytest.raises(InputError, match="no seconds per iteration"):
            logic_module.TimeEstimate.from_output(bad)


def test_start_point_is_shared_with_fine_tune(scene, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    assert logic_module.fine_tune_model_and_device(fine_tune_params(scene, model)) == (
        model,
        "cpu",
    )
    assert logic_module.fine_tune_model_and_device(fine_tune_params(scene, None, "cuda")) == (
        None,
        "cuda",
    )
    with pytest.raises(InputError, match="not found"):
        logic_module.fine_tune_model_and_device(fine_tune_params(scene, tmp_path / "nope.pt"))


# ------------------------------------------------------------------ with a stand-in child
def test_estimate_times_the_recipe_fine_tune_would_run(scene, tmp_path: Path) -> None:
    recorded: list[list[str]] = []
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=printing_factory(recorded)
    )
    model = tmp_path / "model.pt"
    settings = ["training.amp=off"]
    task = logic.start_estimate(model, 300, "cpu", extra_settings=settings)
    assert task.status == "measuring…"
    assert task.wait(60) is JobState.COMPLETED, task.error
    assert task.result == logic_module.TimeEstimate(2.0, "cpu", "float32")
    assert task.status == task.result.describe(300)
    assert not task.job.folder.exists()  # nothing to keep
    assert logic.cached_estimate(model, "cpu", settings) == task.result
    assert logic.cached_estimate(model, "cpu") is None  # other settings: not measured

    pair = labeled_pair(scene)
    logic.start_fine_tune([pair], iterations=300, init_model=model, device="cpu",
                          extra_settings=settings).wait(60)  # fmt: skip
    estimate_args, train_args = recorded
    assert estimate_args[0] == "estimate" and "--json" in estimate_args
    recipe = estimate_args[1 : estimate_args.index("--json")]
    assert recipe == ["--iterations", "300", "--device", "cpu", "--init", str(model)] + [
        "--set",
        "training.amp=off",
    ]
    assert train_args[0] == "train"
    assert train_args[5 : 5 + len(recipe)] == recipe  # after --data D --out O


def test_estimate_cancel_and_bad_arguments(tmp_path: Path, scene) -> None:
    recorded: list[list[str]] = []
    factory = printing_factory(recorded, "import time; time.sleep(60)")
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs", command_factory=factory)
    task = logic.start_estimate(None, 10, "auto")
    assert "--init" not in recorded[0]  # a new model: the preset's recipe
    task.cancel(grace_s=1.0)
    assert task.wait(30) is JobState.CANCELLED
    assert task.result is None and logic.cached_estimate(None, "auto") is None
    with pytest.raises(InputError, match="device"):
        logic.start_estimate(None, 10, "tpu")
    with pytest.raises(InputError, match="at least 1"):
        logic.start_estimate(None, 0, "cpu")
    assert len(recorded) == 1


# ------------------------------------------------------------------ the real `dkuxnet estimate`
@pytest.mark.slow
def test_real_estimate_then_new_iteration_counts_from_the_cache(
    scene, tmp_path: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    # One OpenMP thread: on a machine whose cores are busy (another training run), more
    # threads than free cores spin against each other and one tiny iteration takes ~30 s.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs_dir = tmp_path / "jobs"
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=jobs_dir)  # real command
    task = logic.start_estimate(tiny_checkpoint, iterations=40, device="cpu")
    assert task.wait(TIMEOUT) is JobState.COMPLETED, task.error
    result = task.result
    assert result is not None and result.s_per_iteration > 0
    assert result.total_s(40) == pytest.approx(40 * result.s_per_iteration)
    assert result.device == "cpu" and result.precision in ("bfloat16", "float32")
    assert result.s_per_window is not None and result.s_per_window > 0  # a fine-tune: pseudo
    assert task.status.startswith("Expected: ") and "for 40 iterations" in task.status

    # The panel: another iteration count is computed from the cached seconds per iteration.
    params = fine_tune_params(scene, tiny_checkpoint, "cpu", iterations=500)
    text = logic.estimate_text(params)
    assert text == result.describe(500) and "for 500 iterations" in text
    assert logic_module.format_duration(500 * result.s_per_iteration) in text
    assert list(jobs_dir.iterdir()) == []  # no second job (the first removed its folder)
    assert logic.estimate_text(fine_tune_params(scene, tiny_checkpoint, "auto")) == ""
    assert logic.estimate_text(fine_tune_params(scene, None, "cpu")) == ""


@pytest.mark.slow
def test_real_estimate_with_a_bad_model_says_why(scene, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic = logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs")
    missing = tmp_path / "missing.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    # the checkpoint loader's own words for the garbage file may change; the path leads them
    for model, why in ((missing, "checkpoint not found"), (garbage, "")):
        task = logic.start_estimate(model, 10, "cpu")
        assert task.wait(TIMEOUT) is JobState.FAILED
        assert task.error is not None and task.error.startswith(f"{model}: {why}"), task.error
        assert "Traceback" not in task.error and "\n" not in task.error
        assert logic.cached_estimate(model, "cpu") is None
