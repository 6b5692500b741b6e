"""Shared fixtures: the Slicer-side tests' (which run on the ``slicer-core`` package and are
skipped where it is not installed), and one trained tiny model that several tests share.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dkuxnet.jobs import share_the_cpu

# OpenMP threads that spin while their partner waits for a core collapse on a busy CPU (a
# ranking of four tiny scans took 82 s beside another 2-thread job on 2 cores, 1.2 s with
# passive threads): the suite waits as the product's child processes do (dkuxnet.jobs). Read
# once, when torch loads, which is after this file.
share_the_cpu(os.environ)

# Slicer puts each scripted-module folder on sys.path; do the same so that
# `import DKUXNetSegmentLib` works here as it does inside Slicer.
MODULE_DIR = Path(__file__).resolve().parent.parent / "DKUXNetSegment"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the tiny dual model trained for 40 iterations on clean phantoms
    (``tiny.train_phantom_run``), trained once per session. Tests only read it."""
    from tiny import train_phantom_run

    return train_phantom_run(tmp_path_factory.mktemp("phantom"))


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
