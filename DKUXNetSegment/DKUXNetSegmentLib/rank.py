"""Suggest next to label: ``dkuxnet rank`` orders the unlabeled volumes by uncertainty.

The Fine-tune panel's unlabeled volumes are exported to ``JOB/scans/``; ``dkuxnet rank`` scores
each by the current model's mean uncertainty over its predicted foreground and border and writes
``JOB/ranking.csv``; the rows, mapped back to the volume nodes, fill one table node (most
uncertain first).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import slicer
import vtk

from dkuxnet.errors import InputError
from dkuxnet.events import EVENTS_FILE
from dkuxnet.io import write_volume
from dkuxnet.jobs import Job, JobState

from . import slicer_bridge
from .tasks import (
    PANEL_WORDS,
    PREDICT_CANCEL_GRACE_S,
    Launcher,
    Task,
    check_device,
    with_panel_words,
)
from .uncertainty import UNCERTAINTY_MEASURE_ATTRIBUTE, uncertainty_label

RANKING_TABLE_NAME = "DKUXNet next to label"


def start_rank(
    launcher: Launcher,
    scene: slicer.vtkMRMLScene,
    volumes: Sequence[slicer.vtkMRMLVolumeNode],
    model: str | Path,
    device: str = "auto",
    tta: bool = False,
    table_node: Callable[[], slicer.vtkMRMLTableNode] | None = None,
) -> RankTask:
    """Export the volumes and start ``dkuxnet rank`` on them; returns the running task.

    The volumes are the Fine-tune panel's unlabeled ones; the model is the one Segment uses
    (a single network needs ``tta``, as for the uncertainty map). The task's ranking fills
    the table node ``table_node()`` returns (a new one when ``None``).

    Raises:
        InputError: no volumes, or a bad device.
    """
    check_device(device)
    nodes = list({node.GetID(): node for node in volumes if node is not None}.values())
    if not nodes:
        raise InputError(
            "no unlabeled volumes to rank: add the scans you could label next under "
            "Unlabeled volume in the Fine-tune section first"
        )
    folder = launcher.new_folder("rank")
    cases: dict[str, tuple[str, str]] = {}
    for i, node in enumerate(nodes):
        case = f"scan_{i:03d}"  # the file name: node names need not be unique or valid
        write_volume(slicer_bridge.volume_from_node(node), folder / "scans" / f"{case}.nrrd")
        cases[case] = (node.GetID(), node.GetName())
    csv_path = folder / "ranking.csv"
    args = ["rank", "--model", str(model), "--input", str(folder / "scans")]
    args += ["--output", str(csv_path), "--device", device]
    args += ["--events", str(folder / EVENTS_FILE)] + (["--tta"] if tta else [])
    config = {"task": "rank", "volumes": [n.GetName() for n in nodes], "model": str(model)}
    job = launcher.start(folder, args, config=config)
    return RankTask(
        job,
        scene,
        csv_path,
        cases,
        table_node or (lambda: new_ranking_table(scene)),
        launcher.panel_words,
    )


def new_ranking_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLTableNode:
    """A new, empty table node named after :data:`RANKING_TABLE_NAME`."""
    return scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(RANKING_TABLE_NAME))


@dataclasses.dataclass(frozen=True)
class RankedVolume:
    """One row of the "Suggest next to label" ranking.

    Attributes:
        rank: 1 = the volume to label first.
        node_id: the volume node (it may have been removed since).
        name: the node's name (as it was when the ranking started, if it is gone).
        score: mean uncertainty over the predicted foreground and its border; ``inf`` when the
            model segmented nothing (that volume ranks first).
        foreground_voxels: voxels the model segmented.
    """

    rank: int
    node_id: str
    name: str
    score: float
    foreground_voxels: int

    @property
    def score_text(self) -> str:
        return "nothing segmented" if math.isinf(self.score) else f"{self.score:.4g}"


class RankTask(Task):
    """``dkuxnet rank`` on exported volumes; :attr:`ranking` and :attr:`table` once it ends well.

    Args:
        job: the started job (``--events`` in its folder, ``--output`` = ``csv_path``).
        scene: the scene of the volumes.
        csv_path: the ranking the child writes.
        cases: case name of each exported file -> ``(node ID, node name)``.
        table_node: returns the table node to fill (the logic reuses one).
    """

    def __init__(
        self,
        job: Job,
        scene: slicer.vtkMRMLScene,
        csv_path: Path,
        cases: dict[str, tuple[str, str]],
        table_node: Callable[[], slicer.vtkMRMLTableNode],
        panel_words: Mapping[str, str] = PANEL_WORDS,
    ) -> None:
        super().__init__(job)
        self.panel_words = panel_words
        self.scene = scene
        self.csv_path = csv_path
        self.cases = dict(cases)
        self.uncertainty_measure: str | None = None
        self.ranking: list[RankedVolume] = []
        self.table: slicer.vtkMRMLTableNode | None = None
        self.status = "ranking…"
        self._table_node = table_node

    def cancel(self, grace_s: float = PREDICT_CANCEL_GRACE_S) -> None:
        super().cancel(grace_s)  # nothing to save

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "started":
            self.progress = 0.0
            self.uncertainty_measure = event.get("uncertainty")
            self.status = (
                f"ranking {event.get('total', '?')} volume(s) by "
                f"{uncertainty_label(self.uncertainty_measure)} on {event.get('device', '?')}"
            )
        elif kind == "progress":
            done, total = event.get("done"), event.get("total")
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                self.progress = min(done / total, 1.0)
                self.status = f"ranked {done}/{total}: {self._name(str(event.get('case')))}"

    def _on_end(self) -> None:
        super()._on_end()
        if self.job.state is JobState.FAILED and self.error:
            self.error = with_panel_words(self.error, self.panel_words)

    def _on_success(self) -> None:
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        ranking = []
        for row in rows:
            case = row["case"]
            if case not in self.cases:
                raise InputError(f"the ranking names a scan that was not exported: {case!r}")
            node_id = self.cases[case][0]
            ranking.append(
                RankedVolume(
                    int(row["rank"]),
                    node_id,
                    self._name(case),
                    float(row["score"]),
                    int(row["foreground_voxels"]),
                )
            )
        self.ranking = sorted(ranking, key=lambda r: r.rank)
        self.table = self._table_node()
        fill_ranking_table(self.table, self.ranking, self.uncertainty_measure)
        super()._on_success()
        first = self.ranking[0].name if self.ranking else "?"
        self.status = (
            f"{len(self.ranking)} volume(s) ranked by {uncertainty_label(self.uncertainty_measure)}"
            f" over the predicted foreground and its border; label {first} next"
        )
        shutil.rmtree(self.job.folder, ignore_errors=True)

    def _name(self, case: str) -> str:
        """The volume's current name (its name at the start when it was removed)."""
        node_id, name = self.cases.get(case, ("", case))
        node = self.scene.GetNodeByID(node_id) if node_id else None
        return node.GetName() if node is not None else name


RANKING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "int"),
    ("volume", "string"),
    ("score", "double"),
    ("foreground voxels", "int"),
)


def fill_ranking_table(
    table: slicer.vtkMRMLTableNode, ranking: Sequence[RankedVolume], measure: str | None
) -> None:
    """Replace the table's contents with the ranking, one row per volume in rank order.

    Columns :data:`RANKING_COLUMNS`; the score column's title names the measure, e.g.
    ``score (flip variance)``, and so does the attribute :data:`UNCERTAINTY_MEASURE_ATTRIBUTE`.
    """
    was_modifying = table.StartModify()
    table.RemoveAllColumns()
    arrays = {"int": vtk.vtkIntArray, "string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray}
    columns = {}
    for name, kind in RANKING_COLUMNS:
        column = arrays[kind]()
        column.SetName(name)
        table.AddColumn(column)
        columns[name] = column
    for row in ranking:
        columns["rank"].InsertNextValue(row.rank)
        columns["volume"].InsertNextValue(row.name)
        columns["score"].InsertNextValue(row.score)
        columns["foreground voxels"].InsertNextValue(row.foreground_voxels)
    table.SetColumnTitle("score", f"score ({uncertainty_label(measure)})")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetAttribute(UNCERTAINTY_MEASURE_ATTRIBUTE, measure or "")
    table.GetTable().Modified()
    table.EndModify(was_modifying)
