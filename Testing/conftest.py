"""Shared fixtures for the Slicer-side tests, which run on the ``slicer-core`` package.

Only slicer fixtures (and the module folder on ``sys.path``) live here; the rest of the suite
needs none. Tests that use them are
skipped where ``slicer-core`` is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Slicer puts each scripted-module folder on sys.path; do the same so that
# `import DKUXNetSegmentLib` works here as it does inside Slicer.
MODULE_DIR = Path(__file__).resolve().parent.parent / "DKUXNetSegment"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def slicer_module():
    """The ``slicer`` namespace, with the closed-surface conversion rule registered.

    The Slicer application registers the rule at start-up; outside it, it must be registered
    before the first segmentation node is created, or closed surfaces silently fail.
    """
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):  # the unrelated PyPI package named `slicer`
        pytest.skip("the installed `slicer` package is not slicer-core")
    slicer.vtkSegmentationConverterFactory.GetInstance().RegisterConverterRule(
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()
    )
    return slicer


@pytest.fixture()
def scene(slicer_module):
    """A fresh, empty MRML scene for one test."""
    mrml_scene = slicer_module.vtkMRMLScene()
    yield mrml_scene
    mrml_scene.Clear(1)
