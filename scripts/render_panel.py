"""Render the module's panel (``DKUXNetSegment/Resources/UI/DKUXNetSegment.ui``) to a PNG without Slicer.

The catalogue screenshot (``Resources/Screenshots/make_screenshot.py``) shows this panel beside
the slice and 3D views, so that a user sees the controls they will use. Slicer's Qt is not
available where the project is built, so the ``.ui`` file is loaded by PySide6's ``QUiLoader``
on Qt's off-screen platform, with each Slicer/CTK class replaced in memory by the plain Qt
widget that looks like it (``STAND_INS``): a node selector becomes a combo box holding a node
name, a collapsible section a titled group box, a path field a line edit. Everything else
(labels, buttons, check boxes, tables, their texts and tooltips, the layout) is the file as
Slicer reads it. The picture is therefore the panel's layout and wording, not Slicer's look.

What the widgets show (node names, status text, progress) comes from a JSON file, so that the
screenshot script can fill in what the module logic really produced; see ``PanelState``.

PySide6 is not a dependency of the project (Slicer brings its own Qt); use a separate venv::

    python3 -m venv /work/uivenv && /work/uivenv/bin/pip install PySide6
    QT_QPA_PLATFORM=offscreen /work/uivenv/bin/python scripts/render_panel.py \\
        --state STATE.json OUT.png

``make_screenshot.py --qt-python /work/uivenv/bin/python`` runs this for the catalogue picture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_FILE = ROOT / "DKUXNetSegment" / "Resources" / "UI" / "DKUXNetSegment.ui"
PANEL_WIDTH = 470  # pixels; Slicer's module panel is about this wide on a laptop screen

# Slicer/CTK class -> the Qt class drawn in its place, and the .ui properties the stand-in keeps
# (the others, such as nodeTypes or noneEnabled, mean nothing to a Qt widget).
STAND_INS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qMRMLWidget": ("QWidget", ("geometry",)),
    "ctkCollapsibleButton": ("QGroupBox", ("toolTip",)),  # its "text" becomes the title
    "qMRMLNodeComboBox": ("QComboBox", ("toolTip",)),
    "qMRMLSegmentSelectorWidget": ("QComboBox", ("toolTip",)),
    "ctkPathLineEdit": ("QLineEdit", ("toolTip",)),
}


@dataclass
class PanelState:
    """What the rendered panel shows, by the ``.ui`` object names.

    Attributes:
        combos: combo box (or node selector) -> its items; the first is shown.
        choices: combo box -> the item to show, for combos whose items the ``.ui`` lists.
        texts: label or line edit -> its text.
        progress: progress bar -> value 0..100.
        enabled: widget -> enabled (e.g. Cancel while nothing runs: false, as in the ``.ui``).
        collapsed: sections (collapsible buttons) drawn closed, as a title only; ``None``:
            those the ``.ui`` marks collapsed, ``[]``: all open.
    """

    combos: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)
    enabled: dict[str, bool] = field(default_factory=dict)
    collapsed: list[str] | None = None

    @classmethod
    def load(cls, path: Path) -> PanelState:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass
class StandInPanel:
    """The ``.ui`` rewritten for plain Qt, and what the rewrite took out that the picture needs."""

    xml: bytes
    collapsed: list[str]  # sections the file marks collapsed
    none_display: dict[str, str]  # node selector -> what it shows with no node chosen


def with_stand_ins(ui_xml: bytes) -> StandInPanel:
    """The ``.ui`` text with Slicer's classes replaced by ``STAND_INS``.

    Also drops ``<customwidgets>`` (nothing custom is left to declare) and ``<connections>``
    (they connect ``mrmlSceneChanged``, which only Slicer's widgets have).
    """
    tree = ET.fromstring(ui_xml)
    collapsed, none_display = [], {}
    for widget in tree.iter("widget"):
        cls = widget.get("class", "")
        if cls not in STAND_INS:
            continue
        stand_in, kept = STAND_INS[cls]
        widget.set("class", stand_in)
        name = widget.get("name", "")
        for prop in list(widget.findall("property")):
            prop_name = prop.get("name")
            if cls == "ctkCollapsibleButton" and prop_name == "text":
                prop.set("name", "title")
                continue
            if cls == "ctkCollapsibleButton" and prop_name == "collapsed":
                if prop.findtext("bool") == "true":
                    collapsed.append(name)
            elif prop_name == "noneDisplay":
                none_display[name] = prop.findtext("string") or ""
            if prop_name not in kept:
                widget.remove(prop)
    for section in ("customwidgets", "connections"):
        for element in tree.findall(section):
            tree.remove(element)
    return StandInPanel(ET.tostring(tree, encoding="utf-8"), collapsed, none_display)


def render(state: PanelState, out: Path, ui_file: Path = UI_FILE) -> Path:
    """Load the panel with stand-ins, fill it from ``state`` and save it as a PNG."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import (
        QAbstractItemView,
        QApplication,
        QComboBox,
        QGroupBox,
        QLabel,
        QLineEdit,
        QProgressBar,
        QWidget,
    )

    app = QApplication.instance() or QApplication([])
    app.setStyle("Fusion")
    stand_in = with_stand_ins(ui_file.read_bytes())
    data = QByteArray(stand_in.xml)  # kept in a name: the buffer does not own it
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.ReadOnly)
    loader = QUiLoader()
    panel = loader.load(buffer)
    if panel is None:
        raise SystemExit(f"QUiLoader could not read {ui_file}")

    def child(name: str, kind: type) -> QWidget:
        found = panel.findChild(kind, name)
        if found is None:
            raise SystemExit(f"{ui_file.name} has no {kind.__name__} named {name!r}")
        return found

    for name, text in stand_in.none_display.items():  # a node selector with no node chosen
        child(name, QComboBox).addItem(text)
    for name, items in state.combos.items():
        combo = child(name, QComboBox)
        combo.clear()
        combo.addItems(items)
    for name, item in state.choices.items():
        combo = child(name, QComboBox)
        index = combo.findText(item)
        if index < 0:
            raise SystemExit(f"{name} has no item {item!r}")
        combo.setCurrentIndex(index)
    for name, text in state.texts.items():
        widget = panel.findChild(QLineEdit, name) or child(name, QLabel)
        widget.setText(text)
    for name, value in state.progress.items():
        child(name, QProgressBar).setValue(value)
    for name, enabled in state.enabled.items():
        child(name, QWidget).setEnabled(enabled)
    for name in stand_in.collapsed if state.collapsed is None else state.collapsed:
        section = child(name, QGroupBox)
        for widget in section.findChildren(QWidget):
            widget.hide()
        section.setMinimumHeight(0)
        section.setMaximumHeight(section.fontMetrics().height() + 12)
    for view in panel.findChildren(QAbstractItemView):  # empty here: a few rows tall will do
        view.setMaximumHeight(4 * view.fontMetrics().height() + 16)
    panel.setFixedWidth(PANEL_WIDTH)
    panel.adjustSize()
    panel.resize(PANEL_WIDTH, panel.sizeHint().height())
    out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--state", type=Path, help="JSON of PanelState fields (default: empty)")
    parser.add_argument("--ui", type=Path, default=UI_FILE, help="the .ui file")
    args = parser.parse_args(argv)
    state = PanelState.load(args.state) if args.state else PanelState()
    print(f"wrote {render(state, args.out, args.ui)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
