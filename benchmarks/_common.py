"""Shared pieces of the benchmark scripts: worker subprocesses, peak memory, tables."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss`` is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def run_worker(cmd: list[str]) -> dict[str, Any] | str:
    """Run a worker in a fresh process (so its peak memory is its own).

    Returns the last JSON line it printed, or the reason it failed (its last stderr line).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "DKUXNetSegment") + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return (done.stderr.strip().splitlines() or ["no output"])[-1][:100]
    return dict(json.loads(lines[-1]))


def render(lines: list[list[str]]) -> str:
    """``lines[0]`` is the header; shorter rows (e.g. a failure message) span the rest."""
    header = lines[0]
    table = [row for row in lines if len(row) == len(header)]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)
