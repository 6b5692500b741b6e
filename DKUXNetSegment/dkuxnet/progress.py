"""Console rendering of the event stream: a tqdm progress bar with losses and ETA.

The trainer only writes events; this follows the events file from a background thread, so
the same rendering works for a trainer in this process or in a child process.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dkuxnet.events import EVENTS_FILE, EventReader


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
            + (" (best)" if event.get("best") else "")
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
    bar = tqdm(total=0, unit="it", dynamic_ncols=True, file=sys.stderr)

    def pump() -> None:
        while not stop.wait(0.5):
            for event in reader.poll():
                render_event(bar, event)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for event in reader.poll():
            render_event(bar, event)
        bar.close()
