"""Plain-text tables for the benchmark scripts."""

from __future__ import annotations


def render(lines: list[list[str]]) -> str:
    """``lines[0]`` is the header; shorter rows (e.g. a failure message) span the rest."""
    header = lines[0]
    table = [row for row in lines if len(row) == len(header)]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)
