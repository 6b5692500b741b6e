"""The core never imports slicer, qt, ctk or the web page's trame (it must run outside Slicer
and without the [web] extra; ``dkuxnet web`` imports the page only when it runs)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import dkuxnet
names = [m.name for m in pkgutil.walk_packages(dkuxnet.__path__, "dkuxnet.")]
for name in names:
    importlib.import_module(name)
roots = ("slicer", "qt", "ctk", "vtk", "PythonQt", "DKUXNetSegmentLib", "DKUXNetSegmentWeb")
banned = sorted(
    m for m in sys.modules if m.split(".")[0] in roots or m.startswith(("trame", "wslink"))
)
print(len(names), banned)
assert not banned, banned
assert len(names) > 20, names
"""


def test_core_imports_no_slicer_qt_ctk_trame() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip().endswith("[]")
