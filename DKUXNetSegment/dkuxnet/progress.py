"""Console rendering of the event stream: a tqdm progress bar with losses and ETA.

The trainer only writes events; this follows the events file from a background thread, so
the same rendering works for a trainer in this process or in a child process.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dkuxnet.events import EVENTS_FILE, EventReader

#: Log records carrying ``extra={"rendered_event": ...}`` repeat what an event says; while a
#: progress bar shows the events, they are held back (each line appears once).
RENDERED_EVENT = "rendered_event"


class _RenderedByBar(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, RENDERED_EVENT)


def render_event(bar: Any, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "started":
        bar.reset(total=event.get("total") or 0)
        bar.n = int(event.get("resumed_from") or 0)
        bar.refresh()
    elif kind == "iteration":
        bar.n = int(event["iteration"])
        losses = event.get("losses", {})
        bar.set_postfix(
            {k: f"{v:.3f}" for k, v in losses.items() if k in ("total", "segc", "qdc")},
            refresh=False,
        )
        bar.refresh()
    elif kind == "validation":
        bar.write(
            f"iteration {event['iteration']}: validation mean Dice {event['mean_dice']:.4f}"
            + (" (best)" if event.get("best") else ""),
            file=sys.stderr,  # beside the bar (tqdm.write defaults to stdout)
        )


@contextlib.contextmanager
def follow_training(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Show a progress bar fed by ``run_dir/events.jsonl`` while the body runs."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    reader = EventReader(run_dir / EVENTS_FILE)
    reader.poll()  # skip events of earlier sessions of a resumed run
    stop = threading.Event()
    bars: list[Any] = []  # made at the first "started" event, so no empty bar shows before

    def render(events: list[dict[str, Any]]) -> None:
        for event in events:
            if not bars:
                if event.get("event") != "started":
                    continue
                total = int(event.get("total") or 0)
                bars.append(tqdm(total=total, unit="it", dynamic_ncols=True, file=sys.stderr))
            render_event(bars[0], event)

    def pump() -> None:
        while not stop.wait(0.5):
            render(reader.poll())

    held_back = _RenderedByBar()
    trainer_log = logging.getLogger("dkuxnet.training.trainer")
    trainer_log.addFilter(held_back)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        render(reader.poll())
        trainer_log.removeFilter(held_back)
        if bars:
            bars[0].close()
