"""DKUXNetSegmentWeb.charts: the training curves as SVG, without a browser."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from DKUXNetSegmentWeb.charts import line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_curves_become_polylines_with_a_legend() -> None:
    svg = line_chart(
        {"total": [(1, 1.0), (2, 0.5), (3, 0.25)], "supervised": [(1, 0.8), (3, 0.2)]},
        "Loss",
        "loss",
    )
    root = ET.fromstring(svg)  # well-formed
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    first = [tuple(map(float, p.split(","))) for p in lines[0].get("points", "").split()]
    assert len(first) == 3
    assert first[0][0] < first[1][0] < first[2][0]  # x grows to the right
    assert first[0][1] < first[2][1]  # the loss falls: y in SVG grows downwards
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "total 0.25" in texts and "supervised 0.2" in texts and "Loss" in texts


def test_no_data_yet_and_single_points() -> None:
    assert "no data yet" in line_chart({}, "Validation Dice")
    assert "no data yet" in line_chart({"mean Dice": []}, "Validation Dice")
    root = ET.fromstring(line_chart({"mean Dice": [(5, 0.7)]}, "Dice", y_range=(0, 1)))
    assert root.find(f"{SVG}circle") is not None


def test_names_are_escaped() -> None:
    svg = line_chart({"<script>alert(1)</script>": [(1, 1.0), (2, 2.0)]}, 'a "title" & <b>')
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)
