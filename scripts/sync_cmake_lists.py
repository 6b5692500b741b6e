"""Rewrite the file lists of ``DKUXNetSegment/CMakeLists.txt`` from the files that exist.

Slicer's convention is to list every script and resource of a scripted module explicitly (no
glob), so a new file under ``DKUXNetSegment/`` must be added there; ``Testing/test_cmake_lists.py``
fails until it is. This script does the adding: it replaces the contents of the
``set(MODULE_PYTHON_SCRIPTS ...)`` and ``set(MODULE_PYTHON_RESOURCES ...)`` blocks with the
files git tracks or would track (ignored build products such as ``__pycache__`` are left out).

Usage: ``python scripts/sync_cmake_lists.py [--check]``
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "DKUXNetSegment"
CMAKE_LISTS = MODULE_DIR / "CMakeLists.txt"

log = logging.getLogger("sync_cmake_lists")


def module_files() -> list[str]:
    """Paths (relative to the module folder, '/'-separated) of every file to install."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."],
        cwd=MODULE_DIR,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    files = [line for line in out.splitlines() if line and (MODULE_DIR / line).is_file()]
    return sorted(f for f in files if f != "CMakeLists.txt")


def _block(name: str, files: list[str]) -> str:
    return f"set({name}\n" + "".join(f"  {f}\n" for f in files) + "  )"


def render(text: str, files: list[str]) -> str:
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    for name, items in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        pattern = re.compile(rf"set\({name}\b.*?\n\s*\)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{CMAKE_LISTS}: no set({name} ...) block")
        text = pattern.sub(lambda _m, n=name, i=items: _block(n, i), text, count=1)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if out of date")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    old = CMAKE_LISTS.read_text()
    new = render(old, module_files())
    if new == old:
        log.info("%s is up to date", CMAKE_LISTS.relative_to(ROOT))
        return 0
    if args.check:
        log.info(
            "%s is out of date; run scripts/sync_cmake_lists.py", CMAKE_LISTS.relative_to(ROOT)
        )
        return 1
    CMAKE_LISTS.write_text(new)
    log.info("updated %s", CMAKE_LISTS.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
