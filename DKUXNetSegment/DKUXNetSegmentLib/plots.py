"""The loss curves and validation Dice of a fine-tuning run, as MRML table and chart nodes.

The Slicer panel shows the chart nodes in its layout; the web page reads the same tables back
(:meth:`TrainingPlots.loss_curves`) and draws its own charts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import slicer
import vtk


class TrainingPlots:
    """Table and plot chart nodes with the loss curves and validation Dice of one run."""

    X = "iteration"

    def __init__(self, scene: slicer.vtkMRMLScene, name: str = "DKUXNet fine-tuning") -> None:
        self.scene = scene
        self.loss_table = self._table(f"{name} losses")
        self.dice_table = self._table(f"{name} validation Dice")
        self.loss_chart = self._chart(f"{name} loss", "loss")
        self.dice_chart = self._chart(f"{name} validation Dice", "mean Dice")
        self._add_column(self.dice_table, "mean Dice")
        self._series(self.dice_chart, self.dice_table, "mean Dice", (0.1, 0.6, 0.2))

    def add_losses(self, iteration: int, losses: dict[str, Any]) -> None:
        """Append one row; a loss seen for the first time gets a column and a curve."""
        for name in losses:
            if self._column(self.loss_table, name) is None:
                self._add_column(self.loss_table, name)
                colour = _PALETTE[(self.loss_table.GetNumberOfColumns() - 2) % len(_PALETTE)]
                self._series(self.loss_chart, self.loss_table, name, colour)
        self._append(self.loss_table, iteration, losses)

    def add_dice(self, iteration: int, mean_dice: float) -> None:
        self._append(self.dice_table, iteration, {"mean Dice": mean_dice})

    def clear(self) -> None:
        for table in (self.loss_table, self.dice_table):
            t = table.GetTable()
            for i in range(t.GetNumberOfColumns()):
                t.GetColumn(i).SetNumberOfTuples(0)
            t.Modified()
            table.Modified()

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        """Fill the tables from an existing event file (resuming, reloading)."""
        for event in events:
            if event.get("event") == "iteration":
                self.add_losses(int(event["iteration"]), event.get("losses") or {})
            elif event.get("event") == "validation" and event.get("mean_dice") is not None:
                self.add_dice(int(event["iteration"]), float(event["mean_dice"]))

    def nodes(self) -> list[slicer.vtkMRMLNode]:
        return [self.loss_table, self.dice_table, self.loss_chart, self.dice_chart]

    def loss_curves(self) -> dict[str, list[tuple[float, float]]]:
        """Each loss as ``(iteration, value)`` points, read back from the table (a front end
        that draws its own charts, such as the web page, reads the same nodes)."""
        return _table_curves(self.loss_table, self.X)

    def dice_curves(self) -> dict[str, list[tuple[float, float]]]:
        """The validation Dice as ``(iteration, value)`` points, like :meth:`loss_curves`."""
        return _table_curves(self.dice_table, self.X)

    # internals
    def _table(self, name: str) -> slicer.vtkMRMLTableNode:
        table = self.scene.AddNewNodeByClass(
            "vtkMRMLTableNode", self.scene.GenerateUniqueName(name)
        )
        self._add_column(table, self.X)
        return table

    def _chart(self, title: str, y_title: str) -> slicer.vtkMRMLPlotChartNode:
        chart = self.scene.AddNewNodeByClass(
            "vtkMRMLPlotChartNode", self.scene.GenerateUniqueName(title)
        )
        chart.SetTitle(title)
        chart.SetXAxisTitle(self.X)
        chart.SetYAxisTitle(y_title)
        return chart

    def _series(self, chart, table, column: str, colour: tuple[float, float, float]) -> None:
        series = self.scene.AddNewNodeByClass(
            "vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(column)
        )
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(self.X)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())

    @staticmethod
    def _column(table: slicer.vtkMRMLTableNode, name: str):
        return table.GetTable().GetColumnByName(name)

    @staticmethod
    def _add_column(table: slicer.vtkMRMLTableNode, name: str) -> None:
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        column.SetNumberOfTuples(table.GetNumberOfRows())
        column.Fill(math.nan)  # earlier rows did not have this value
        table.AddColumn(column)

    def _append(self, table: slicer.vtkMRMLTableNode, iteration: int, values: dict) -> None:
        t = table.GetTable()
        for i in range(t.GetNumberOfColumns()):
            column = t.GetColumn(i)
            name = column.GetName()
            value = iteration if name == self.X else values.get(name, math.nan)
            column.InsertNextValue(float(value) if isinstance(value, int | float) else math.nan)
        t.Modified()
        table.Modified()


def _table_curves(
    table: slicer.vtkMRMLTableNode, x_name: str
) -> dict[str, list[tuple[float, float]]]:
    """Column name -> its ``(x, y)`` points, rows where either is not a number left out."""
    t = table.GetTable()
    x = t.GetColumnByName(x_name)
    curves: dict[str, list[tuple[float, float]]] = {}
    for i in range(t.GetNumberOfColumns()):
        column = t.GetColumn(i)
        if column is x:
            continue
        points = [(x.GetValue(r), column.GetValue(r)) for r in range(t.GetNumberOfRows())]
        curves[column.GetName()] = [
            (float(a), float(b)) for a, b in points if math.isfinite(a) and math.isfinite(b)
        ]
    return curves


_PALETTE = [(0.85, 0.33, 0.1), (0.0, 0.45, 0.74), (0.49, 0.18, 0.56), (0.47, 0.67, 0.19)]
