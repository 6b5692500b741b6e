"""The core never imports slicer, qt or ctk (it must run outside Slicer)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import dkuxnet
names = [m.name for m in pkgutil.walk_packages(dkuxnet.__path__, "dkuxnet.")]
for name in names:
    importlib.import_module(name)
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("slicer", "qt", "ctk", "vtk", "PythonQt"))
print(len(names), banned)
assert not banned, banned
assert len(names) > 20, names
"""


def test_core_imports_no_slicer_qt_ctk() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip().endswith("[]")
