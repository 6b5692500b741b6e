"""Every ``self.ui.<name>`` in the module script exists in the .ui file with the right class.

A widget renamed in Qt Designer otherwise breaks only when a clinician clicks it. The expected
class follows from the name's suffix (the naming convention of this module), so a button turned
into a check box fails too.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent / "DKUXNetSegment"
SCRIPT = MODULE_DIR / "DKUXNetSegment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DKUXNetSegment.ui"

# name suffix -> Qt class; the longest matching suffix wins
SUFFIX_CLASSES = {
    "CollapsibleButton": "ctkCollapsibleButton",
    "Button": "QPushButton",
    "SegmentSelector": "qMRMLSegmentSelectorWidget",
    "Selector": "qMRMLNodeComboBox",
    "ComboBox": "QComboBox",
    "CheckBox": "QCheckBox",
    "SpinBox": "QSpinBox",
    "ProgressBar": "QProgressBar",
    "Label": "QLabel",
    "LineEdit": "ctkPathLineEdit",
    "TableWidget": "QTableWidget",
    "ListWidget": "QListWidget",
}


def ui_names_used() -> set[str]:
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def ui_widgets() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def expected_class(name: str) -> str | None:
    matches = [s for s in SUFFIX_CLASSES if name.endswith(s)]
    return SUFFIX_CLASSES[max(matches, key=len)] if matches else None


def test_script_uses_widgets_at_all() -> None:
    assert len(ui_names_used()) > 20


def test_every_used_name_exists_with_the_expected_class() -> None:
    widgets = ui_widgets()
    problems = []
    for name in sorted(ui_names_used()):
        want = expected_class(name)
        if want is None:
            problems.append(f"{name}: name has no known suffix ({', '.join(SUFFIX_CLASSES)})")
        elif name not in widgets:
            problems.append(f"{name}: not in {UI_FILE.name}")
        elif widgets[name] != want:
            problems.append(f"{name}: is {widgets[name]} in the .ui, the code expects {want}")
    assert not problems, "\n".join(problems)


def test_mrml_widgets_get_the_scene() -> None:
    """Node selectors show nothing unless mrmlSceneChanged is connected to setMRMLScene."""
    root = ET.parse(UI_FILE).getroot()
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {
        name
        for name, cls in ui_widgets().items()
        if cls.startswith("qMRML") and cls != "qMRMLWidget"
    }
    assert mrml_widgets and mrml_widgets <= connected, sorted(mrml_widgets - connected)


def test_custom_widgets_are_declared() -> None:
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {cls for cls in ui_widgets().values() if not cls.startswith("Q")}
    assert used <= declared, sorted(used - declared)
