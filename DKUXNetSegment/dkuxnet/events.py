"""The event protocol: JSON lines that long jobs write and the CLI/GUI read.

Every line of ``events.jsonl`` is one JSON object with at least ``"event"`` (the kind) and
``"time"`` (seconds since the epoch). Kinds and their fields:

===============  ==========================================================================
``started``      ``job`` (train|predict|...), ``total`` (iterations or cases), ``device``,
                 ``resumed_from`` (iteration, 0 for a new run), free ``message`` for humans;
                 predict and rank also ``uncertainty`` (the measure of the maps, or null)
``iteration``    ``iteration``, ``total``, ``losses`` (name -> float), ``lr``, ``it_per_s``
``validation``   ``iteration``, ``dice`` (case -> float), ``mean_dice``, ``best``
``checkpoint``   ``iteration``, ``path``, ``kind`` (last|best)
``progress``     ``stage`` (e.g. reading|predicting|writing), ``done``, ``total``, ``case``
``output``       ``path`` of a finished output file, ``case``
``finished``     ``status`` (completed|cancelled|failed), ``error`` (message or null)
===============  ==========================================================================

Numbers travel as fields; ``message`` is for humans only and never parsed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"
FINISHED_STATUSES = ("completed", "cancelled", "failed")


class EventWriter:
    """Append events to a JSON-lines file; each line is flushed as soon as it is written.

    Args:
        path: the ``events.jsonl`` file (created with its parent folder if missing).
        enabled: ``False`` turns every call into a no-op (non-zero DDP ranks).
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"event": event, "time": time.time(), **fields}
        if self.enabled:
            line = json.dumps(record, default=_jsonable, allow_nan=False) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        return record


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class EventReader:
    """Read new events from a growing JSON-lines file, incrementally.

    ``poll()`` returns only the events appended since the previous call. A last line without
    its newline (the writer is mid-write) is kept back until it is complete; a line that is
    complete but not valid JSON is skipped, so a reader never crashes on a damaged file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._pending = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()  # b"" when data ended with a newline
        events: list[dict[str, Any]] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
        return events


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete events of a file (empty list when it does not exist)."""
    return EventReader(path).poll()
