"""DKUXNetSegmentLib.controller on slicer-core: what both front ends render, without either.

The jobs are real child processes of the stand-in ``Testing/fake_dkuxnet.py`` (predict, train,
rank and estimate without a model), started by the real logic; the controller reads the same
parameter node a front end would. What is checked is what the Slicer panel and the web page
used to decide each on their own: what may start, what a job's end does and says, and what
the views show.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from dkuxnet.errors import InputError
from dkuxnet.jobs import JobState

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
controller_module = pytest.importorskip("DKUXNetSegmentLib.controller")
region = pytest.importorskip("DKUXNetSegmentLib.segment_region")

from test_slicer_logic import FAKE, fake_factory, make_pair, make_volume  # noqa: E402

TIMEOUT = 60


@pytest.fixture()
def controller(scene, tmp_path):
    logic = logic_module.DKUXNetLogic(
        scene, jobs_dir=tmp_path / "jobs", command_factory=fake_factory
    )
    params = logic_module.Parameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    params.model_source, params.model_path = "file", str(FAKE)  # any file is a "model" here
    params.device = "cpu"
    return controller_module.Controller(logic, lambda: params)


def run_to_end(controller, task) -> list:
    """Poll as a front end's timer does until ``task`` ends; every outcome on the way."""
    outcomes = []
    deadline = time.monotonic() + TIMEOUT
    while not task.state.is_final and time.monotonic() < deadline:
        outcomes += controller.poll()
        time.sleep(0.02)
    outcomes += controller.poll()
    assert task.state.is_final, "the job did not end"
    return outcomes


def chest_volume(scene):
    """A scan whose field of view holds about 12 training crops (as the whole challenge scan)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chest")
    slicer.util.updateVolumeFromArray(node, np.zeros((22, 72, 72), np.float32))
    node.SetSpacing(5.0, 5.0, 2.5)  # 360 x 360 x 55 mm
    return node


# ------------------------------------------------------------------ Segment
def test_segment_passes_every_choice_and_refuses_what_cannot_start(controller, scene) -> None:
    with pytest.raises(InputError, match="choose or load a volume first"):
        controller.segment()
    assert controller.view().can_segment is False and controller.view().segment.status == ""
    volume, _ = make_volume(scene)
    params = controller.parameters
    params.input_volume = volume
    params.show_uncertainty = True  # the panel passed it, the page did not: both do now
    params.tta = True
    roi = controller.place_segment_region()
    assert params.roi is roi and region.find_segment_region(scene) is roi
    task = controller.segment()
    command = task.job.command
    assert "--uncertainty" in command and "--tta" in command
    assert any(arg.startswith("--roi=") for arg in command)
    view = controller.view()
    assert view.segment.running and not view.can_segment and not view.can_place_box
    with pytest.raises(InputError, match="already running"):
        controller.segment()

    (outcome,) = run_to_end(controller, task)
    assert task.state is JobState.COMPLETED, task.error
    assert (outcome.action, outcome.level, outcome.message) == (
        "segment",
        "status",
        "Segmentation finished.",
    )
    assert task.uncertainty_result is not None  # the map the page can now show too
    view = controller.view()
    assert view.segment.progress == 100 and view.segment.status.startswith("completed")
    assert view.segment.status == task.describe() and view.can_segment
    assert controller.poll() == []  # an ending is reported once


def test_segment_warning_failure_and_cancel_outcomes(controller, scene, monkeypatch) -> None:
    volume, _ = make_volume(scene)
    controller.parameters.input_volume = volume
    monkeypatch.setenv("FAKE_DKUXNET_WARN_CHECK", "too_large")
    (outcome,) = run_to_end(controller, controller.segment())
    assert outcome.level == "warning" and outcome.warnings == ("fake volume check: too_large",)
    assert outcome.message == "Segmentation finished. Warning: fake volume check: too_large"
    assert controller.view().region_advice == region.TOO_LARGE_ADVICE  # offer the box

    monkeypatch.delenv("FAKE_DKUXNET_WARN_CHECK")
    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    (outcome,) = run_to_end(controller, controller.segment())
    assert (outcome.level, outcome.text) == ("error", "Segmentation failed.")
    assert "model file is corrupt" in outcome.details
    assert outcome.message == f"Segmentation failed: {outcome.details}"
    assert controller.view().region_advice == ""  # the too-large result is no longer the last

    monkeypatch.delenv("FAKE_DKUXNET_FAIL")
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "5")
    task = controller.segment()
    controller.cancel_segment()
    (outcome,) = run_to_end(controller, task)
    assert (outcome.level, outcome.message) == ("status", "Segmentation cancelled.")


def test_the_box_advice_speaks_the_front_ends_words(controller, scene) -> None:
    chest = chest_volume(scene)
    controller.parameters.input_volume = chest
    advice = controller.view().region_advice
    assert advice.endswith(region.PLACE_BOX_PANEL_WORDS["field_of_view"])
    assert "about 12 times" in advice
    words = {"too_large": "Type a box.", "field_of_view": "Type a box first."}
    page = controller_module.Controller(controller.logic, lambda: controller.parameters, words)
    assert page.view().region_advice.endswith(" Type a box first.")
    page.place_segment_region()  # a box is chosen: nothing more to say
    assert page.view().region_advice == "" and controller.view().region_advice == ""


# ------------------------------------------------------------------ Suggest next to label
def test_suggest_next_ranks_the_unlabeled_volumes(controller, scene, monkeypatch) -> None:
    with pytest.raises(InputError, match="no unlabeled volumes to rank"):
        controller.suggest_next()
    dim, _ = make_volume(scene, "dim", seed=1)
    bright, _ = make_volume(scene, "bright", seed=2)
    import slicer

    slicer.util.updateVolumeFromArray(bright, slicer.util.arrayFromVolume(bright) + 100)
    controller.parameters.unlabeled_volumes = [dim, bright]
    task = controller.suggest_next()
    assert not controller.view().can_rank and controller.view().ranked == ()
    with pytest.raises(InputError, match="already running"):
        controller.suggest_next()
    (outcome,) = run_to_end(controller, task)
    assert task.state is JobState.COMPLETED, task.error
    assert outcome.action == "rank" and outcome.level == "status"
    assert outcome.text.startswith("2 volume(s) ranked by flip variance")
    assert outcome.text.endswith("label bright next.")
    view = controller.view()
    assert [ranked.name for ranked in view.ranked] == ["bright", "dim"] and view.can_rank
    assert view.ranking.status == task.describe()
    assert controller.ranked_volume(0) is bright and controller.ranked_volume(2) is None

    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    (outcome,) = run_to_end(controller, controller.suggest_next())
    assert outcome.level == "error" and outcome.text == "Could not rank the unlabeled volumes."
    assert "model file is corrupt" in outcome.details


# ------------------------------------------------------------------ Fine-tune
def test_fine_tune_adopts_then_cancels_resumes_and_guards(controller, scene, monkeypatch) -> None:
    params = controller.parameters
    with pytest.raises(InputError, match="at least one labeled"):
        controller.start_fine_tune()
    assert not controller.view().can_fine_tune and not controller.view().can_resume
    pair, _ = make_pair(scene, "L1", 1)
    params.labeled_pairs, params.iterations = [pair], 6
    params.start_from_current_model = False
    assert controller.view().can_fine_tune

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.5")  # an estimate that is still measuring ...
    estimate = controller.estimate_time()
    assert controller.view().estimate_text == "measuring…"
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.01")
    task = controller.start_fine_tune()  # ... is cancelled: it would slow training down
    assert estimate.status == "cancelling"
    assert Path(params.fine_tune_folder) == task.job.folder
    view = controller.view()
    assert not view.can_fine_tune and not view.can_estimate and not view.can_resume
    for start in (controller.start_fine_tune, controller.resume_fine_tune):
        with pytest.raises(InputError, match="already running"):
            start()
    with pytest.raises(InputError, match="fine-tuning is running"):
        controller.estimate_time()

    outcomes = run_to_end(controller, task)
    assert [o.action for o in outcomes] == ["fine_tune"], outcomes
    (outcome,) = outcomes
    assert task.state is JobState.COMPLETED, task.error
    assert (outcome.level, outcome.message) == (
        "info",
        f"Fine-tuning finished; Segment now uses {task.model_path}.",
    )
    assert (params.model_source, Path(params.model_path)) == ("run", task.run_dir)
    assert not controller.view().can_resume  # a completed run has nothing to continue
    assert controller.view().fine_tune.progress == 100

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.2")
    params.iterations = 30
    task = controller.start_fine_tune()
    deadline = time.monotonic() + TIMEOUT
    while task.iteration < 2 and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.02)
    assert "left" in controller.view().fine_tune.status  # the ETA while it runs
    controller.cancel_fine_tune()
    (outcome,) = run_to_end(controller, task)
    assert task.state is JobState.CANCELLED and outcome.level == "status"
    assert "Resume continues" in outcome.message and controller.view().can_resume

    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.001")
    resumed = controller.resume_fine_tune()
    assert resumed.plots is task.plots  # one history, one chart
    run_to_end(controller, resumed)
    assert resumed.state is JobState.COMPLETED and resumed.iteration == 30
    with pytest.raises(InputError, match="no stopped fine-tuning run"):
        controller.resume_fine_tune()


def test_a_fine_tune_that_kept_its_start_model_says_so(controller, scene, monkeypatch) -> None:
    """training.start_check: the start model validated first (Dice 0.9) was never beaten."""
    monkeypatch.setenv("FAKE_DKUXNET_START_DICE", "0.9")
    monkeypatch.setenv("FAKE_DKUXNET_DICE", "0.5,0.8,0.6")
    params = controller.parameters
    pair, _ = make_pair(scene, "L1", 1)
    params.labeled_pairs, params.iterations = [pair], 6
    params.start_from_current_model = True
    task = controller.start_fine_tune()
    (outcome,) = run_to_end(controller, task)
    assert task.state is JobState.COMPLETED, task.error
    assert outcome.level == "info" and outcome.message == (
        "Fine-tuning finished without beating the start model on the validation scan; Segment "
        f"uses the start model's weights, saved as {task.model_path}."
    )
    assert json.loads(task.model_path.read_text())["iteration"] == 0


def test_can_resume_asks_the_folder_when_this_session_has_no_task(
    controller, scene, tmp_path, monkeypatch
) -> None:
    """A scene saved with a cancelled run, reopened: Resume is offered from the folder alone,
    and only for a folder this module wrote (the panel used to offer any run with last.pt)."""
    params = controller.parameters
    pair, _ = make_pair(scene, "L1", 1)
    params.labeled_pairs, params.iterations = [pair], 30
    params.start_from_current_model = False
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.2")
    task = controller.start_fine_tune()
    deadline = time.monotonic() + TIMEOUT
    while task.iteration < 1 and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.02)
    controller.cancel_fine_tune()
    run_to_end(controller, task)

    reopened = controller_module.Controller(controller.logic, lambda: params)
    assert reopened.can_resume() and reopened.view().can_resume
    (task.job.folder / "finetune.json").unlink()
    assert not reopened.can_resume()
    params.fine_tune_folder = str(tmp_path / "nowhere")
    assert not reopened.can_resume()


# ------------------------------------------------------------------ Estimate time
def test_estimate_text_measuring_result_and_failure(controller, scene, monkeypatch) -> None:
    params = controller.parameters
    params.start_from_current_model, params.iterations = False, 100
    assert controller.view().estimate_text == "" and controller.view().can_estimate
    task = controller.estimate_time()
    assert controller.view().estimate_text == "measuring…"
    with pytest.raises(InputError, match="already running"):
        controller.estimate_time()
    assert run_to_end(controller, task) == []  # its end shows in the estimate line only
    assert controller.view().estimate_text.startswith("Expected: about 3 min for 100 iterations")

    monkeypatch.setenv("FAKE_DKUXNET_FAIL", "1")
    run_to_end(controller, controller.estimate_time())
    assert controller.view().estimate_text == "Could not measure: fake estimate: no memory"


def test_stop_all_ends_every_running_job(controller, scene, monkeypatch) -> None:
    volume, _ = make_volume(scene)
    controller.parameters.input_volume = volume
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "5")
    task = controller.segment()
    assert controller.running()
    controller.stop_all(grace_s=1.0)
    controller.poll()
    assert task.state.is_final and not controller.running()
