"""``scripts/render_panel.py``: the module's ``.ui`` rewritten for plain Qt draws every widget.

The catalogue screenshot shows the panel rendered with Qt stand-ins for Slicer's classes. A
Slicer or CTK widget added to the ``.ui`` without a stand-in would make ``QUiLoader`` fall back
to an empty placeholder, and the picture would silently miss a control; this test says which
class needs one. It reads XML only: PySide6 is not a dependency of the project.
"""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _render_panel():
    spec = importlib.util.spec_from_file_location(
        "render_panel", ROOT / "scripts" / "render_panel.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_widget_of_the_ui_is_plain_qt_after_the_rewrite() -> None:
    render_panel = _render_panel()
    panel = render_panel.with_stand_ins(render_panel.UI_FILE.read_bytes())
    tree = ET.fromstring(panel.xml)
    classes = {widget.get("class") for widget in tree.iter("widget")}
    not_qt = sorted(c for c in classes if not (c or "").startswith("Q"))
    assert not not_qt, f"give these a stand-in in render_panel.STAND_INS: {not_qt}"
    assert tree.find("customwidgets") is None and tree.find("connections") is None


def test_the_rewrite_keeps_titles_and_reads_what_the_stand_ins_cannot_show() -> None:
    render_panel = _render_panel()
    panel = render_panel.with_stand_ins(render_panel.UI_FILE.read_bytes())
    tree = ET.fromstring(panel.xml)
    segment = tree.find(".//widget[@name='segmentCollapsibleButton']")
    assert segment is not None and segment.get("class") == "QGroupBox"
    assert segment.find("property[@name='title']/string").text == "Segment"
    # Slicer-only properties are gone, and the ones the picture needs were read first
    selector = tree.find(".//widget[@name='inputVolumeSelector']")
    assert selector is not None and selector.find("property[@name='nodeTypes']") is None
    assert panel.none_display["inputVolumeSelector"] == "Select a volume"
    assert panel.collapsed == ["fineTuneCollapsibleButton"]
