"""The Slicer panel's own code (``DKUXNetSegment.py``) on slicer-core, without Qt.

``qt``, ``ctk`` and ``slicer.ScriptedLoadableModule`` exist only inside the Slicer application.
Here they are stand-ins: the panel's widgets accept any attribute and call (nothing is drawn),
and the module logic's ``getParameterNode`` does what Slicer's does (the scene's singleton
``vtkMRMLScriptedModuleNode`` of the module, created when missing). What is tested is the
panel's state: which parameter node it uses, what it does when a job ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
logic_module = pytest.importorskip("DKUXNetSegmentLib.logic")
bridge = pytest.importorskip("DKUXNetSegmentLib.slicer_bridge")

from test_slicer_logic import fake_factory, make_pair  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "DKUXNetSegment" / "DKUXNetSegment.py"
MODULE_NAME = "DKUXNetSegment"
TIMEOUT = 60


class Anything:
    """A stand-in widget: every attribute exists, every call works, assignments are kept."""

    def __getattr__(self, name: str) -> Anything:
        value = Anything()
        object.__setattr__(self, name, value)
        return value

    def __call__(self, *args: object, **kwargs: object) -> Anything:
        return Anything()


def singleton_parameter_node(scene, module_name: str = MODULE_NAME):
    """What ``ScriptedLoadableModuleLogic.getParameterNode`` returns (Slicer 5.10)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        import slicer

        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetName(scene.GenerateUniqueName(module_name))
        node.SetAttribute("ModuleName", module_name)
        node.SetSingletonTag(module_name)
        node = scene.AddNode(node)
    return node


@pytest.fixture()
def panel_module(scene, monkeypatch):
    """``DKUXNetSegment.py`` imported over stand-ins for qt, ctk and ScriptedLoadableModule."""
    import slicer

    class ModuleLogic:
        def getParameterNode(self):
            return singleton_parameter_node(slicer.mrmlScene)

    stubs = types.ModuleType("slicer.ScriptedLoadableModule")
    stubs.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})  # type: ignore[attr-defined]
    stubs.ScriptedLoadableModuleWidget = type(  # type: ignore[attr-defined]
        "ScriptedLoadableModuleWidget", (), {"__init__": lambda self, parent=None: None}
    )
    stubs.ScriptedLoadableModuleLogic = ModuleLogic  # type: ignore[attr-defined]
    stubs.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", stubs)
    monkeypatch.setitem(sys.modules, "qt", Anything())
    monkeypatch.setitem(sys.modules, "ctk", Anything())
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "modules", Anything(), raising=False)  # e.g. the plots module
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext)  # a Qt cursor
    shown: list[str] = []
    for name in ("infoDisplay", "warningDisplay", "errorDisplay"):
        monkeypatch.setattr(
            slicer.util, name, lambda text, *a, **k: shown.append(str(text)), raising=False
        )
    spec = importlib.util.spec_from_file_location("DKUXNetSegment_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.shown = shown  # type: ignore[attr-defined]
    return module


def make_panel(module, scene, tmp_path):
    """The widget after setup(), with stand-in widgets and the real logic (fake child)."""
    widget = module.DKUXNetSegmentWidget()
    widget.ui = Anything()
    widget.timer = Anything()
    widget.parent = types.SimpleNamespace(isEntered=False)
    logic = module.DKUXNetSegmentLogic(
        logic_module.DKUXNetLogic(scene, jobs_dir=tmp_path / "jobs", command_factory=fake_factory)
    )
    logic.dependenciesChecked = True
    widget.logic = logic
    widget.initializeParameterNode()
    return widget


def test_fine_tune_ending_after_the_scene_closed_while_hidden_is_adopted(
    panel_module, scene, tmp_path, monkeypatch
) -> None:
    """Start a fine-tune, hide the panel, close the scene, the job ends: the timer adopts it.

    The panel's parameter node was None after the close (the module was not entered again),
    so each timer tick raised AttributeError and the new model was never used by Segment.
    """
    monkeypatch.setenv("FAKE_DKUXNET_SLEEP", "0.05")
    widget = make_panel(panel_module, scene, tmp_path)
    pair, _ = make_pair(scene, "L1", 1)
    params = widget._parameters()
    params.labeled_pairs, params.iterations, params.start_from_current_model = [pair], 6, False
    widget.onFineTuneStart()
    task = widget.logic.controller.fine_tune_task
    assert task is not None, panel_module.shown
    widget.exit()  # the user switches to another module: the timer keeps polling
    widget.onSceneStartClose(scene, None)
    scene.Clear(0)
    widget.onSceneEndClose(scene, None)  # not entered: the panel does not fetch a new node
    assert widget._parameterNode is None

    deadline = time.monotonic() + TIMEOUT
    while not task.state.is_final and time.monotonic() < deadline:
        widget.onTimer()
        time.sleep(0.05)
    assert task.state is logic_module.JobState.COMPLETED, task.error
    params = logic_module.Parameters(singleton_parameter_node(scene))
    assert params.model_source == "run"
    assert Path(params.model_path) == task.run_dir
    assert any(text.startswith("Fine-tuning finished") for text in panel_module.shown)
    widget.onTimer()  # a tick after the end is quiet too


# ------------------------------------------------------------------ volume selectors
VOLUME_SELECTORS = ("inputVolumeSelector", "pairVolumeSelector", "unlabeledVolumeSelector")


def scene_with_helper_volumes(scene):
    """A label map and an uncertainty map made by the module, added before the scan."""
    import numpy as np

    from dkuxnet.io import Volume

    grid = Volume(np.zeros((4, 5, 6), np.float32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    label = bridge.add_volume_node(
        scene, grid.with_array(np.ones((4, 5, 6), np.uint8)), "label", "vtkMRMLLabelMapVolumeNode"
    )
    hidden = bridge.add_volume_node(scene, grid, "helper")
    hidden.SetHideFromEditors(True)
    scan = bridge.add_volume_node(scene, grid.with_array(np.arange(120.0).reshape(4, 5, 6)), "CT")
    uncertainty = logic_module.show_uncertainty_map(grid, scan, "entropy")
    scene.RemoveNode(scan)  # the map outlives its scan; a second scan comes after it
    scan = bridge.add_volume_node(scene, grid, "MR")
    return label, uncertainty, scan


def test_no_label_or_uncertainty_map_is_taken_for_an_image(scene) -> None:
    label, uncertainty, scan = scene_with_helper_volumes(scene)
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label  # what the panel took
    assert logic_module.default_input_volume(scene) is scan
    assert logic_module.segmentable_volumes(scene) == [scan]
    assert logic_module.volume_selector_hidden_ids(scene) == [uncertainty.GetID()]
    assert logic_module.default_input_volume(scene.__class__()) is None


def test_panel_starts_on_the_scan_and_its_selectors_hide_the_maps(
    panel_module, scene, tmp_path
) -> None:
    _, uncertainty, scan = scene_with_helper_volumes(scene)
    widget = make_panel(panel_module, scene, tmp_path)
    assert widget._parameters().input_volume is scan
    hidden: dict[str, list[str]] = {}  # what the panel sets on each selector's proxy model

    class Selector:
        def __init__(self, name: str) -> None:
            self.name = name

        def sortFilterProxyModel(self):
            selector = self

            class Proxy:
                def __setattr__(self, key: str, value: list[str]) -> None:
                    assert key == "hiddenNodeIDs"
                    hidden[selector.name] = list(value)

            return Proxy()

    for name in VOLUME_SELECTORS:
        setattr(widget.ui, name, Selector(name))
    widget.hideModuleMapsFromSelectors()
    assert hidden == {name: [uncertainty.GetID()] for name in VOLUME_SELECTORS}


def test_volume_selectors_list_no_label_maps() -> None:
    """``showChildNodeTypes`` false: vtkMRMLLabelMapVolumeNode, a subclass, is not listed."""
    import xml.etree.ElementTree as ET

    ui = ET.parse(SCRIPT.parent / "Resources" / "UI" / "DKUXNetSegment.ui")
    for name in VOLUME_SELECTORS:
        widget = ui.find(f".//widget[@name='{name}']")
        assert widget is not None, name
        types_ = [s.text for s in widget.findall("./property[@name='nodeTypes']/stringlist/string")]
        assert types_ == ["vtkMRMLScalarVolumeNode"], name
        show_children = widget.find("./property[@name='showChildNodeTypes']/bool")
        assert show_children is not None and show_children.text == "false", name


def test_panel_reads_legacy_pairs_and_says_when_it_cannot(panel_module, scene, tmp_path) -> None:
    from test_slicer_logic import save_in_the_legacy_format

    pairs = [make_pair(scene, f"L{i}", i)[0] for i in range(2)]
    save_in_the_legacy_format(singleton_parameter_node(scene), pairs)
    widget = make_panel(panel_module, scene, tmp_path)
    assert [p.volume.GetName() for p in widget._parameters().labeled_pairs] == ["L0", "L1"]
    assert panel_module.shown == []

    scene.Clear(0)
    pairs = [make_pair(scene, f"M{i}", i)[0] for i in range(2)]
    save_in_the_legacy_format(singleton_parameter_node(scene), pairs[:1])  # lists of 1, 1 ...
    singleton_parameter_node(scene).SetParameter("LabeledSegmentIds", '["a", "b"]')  # ... and 2
    widget.initializeParameterNode()
    assert widget._parameters().labeled_pairs == []
    assert len(panel_module.shown) == 1 and "cannot be paired up" in panel_module.shown[0]
