"""Reports and small formatting helpers shared by the commands, the demo and the front ends.

* :func:`write_csv` / :func:`write_json`: a per-case metrics table (``dkuxnet evaluate``, the
  demo's ``metrics.csv``).
* :func:`format_duration`: an approximate duration for a plan (``"about 14 min"``);
  :func:`format_clock`: an exact one for a running task (``"1:02:03"``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

#: Columns of the per-case metrics table (:func:`dkuxnet.metrics.case_metrics` plus the name).
METRIC_COLUMNS = ("case", "dice", "jaccard", "hd95", "asd")


def finite_or_none(value: Any) -> Any:
    """``value`` made JSON-safe: NaN becomes ``None``, infinities ``"inf"`` / ``"-inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-case table as CSV (:data:`METRIC_COLUMNS`; other keys are left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(rows: list[dict[str, Any]], summary: dict[str, Any], units: str, path: Path) -> None:
    """JSON with ``units``, ``cases`` and ``summary``; infinities become the string "inf"."""
    record = {
        "units": units,
        "cases": [{k: finite_or_none(v) for k, v in row.items()} for row in rows],
        "summary": {
            metric: {k: finite_or_none(v) for k, v in values.items()}
            for metric, values in summary.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def format_duration(seconds: float) -> str:
    """``"about 14 min"``, ``"about 1 h 20 min"``, ``"under a minute"``: a duration to plan by."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


def format_clock(seconds: float | None) -> str:
    """``"1:02:03"`` / ``"2:03"``: elapsed or remaining time of a task; ``""`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
