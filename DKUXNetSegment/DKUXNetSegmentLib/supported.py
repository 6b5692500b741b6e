"""Which 3D Slicer the extension runs on, checked before any other part of it is imported.

Slicer imports ``DKUXNetSegment.py`` at start-up, whatever its version, and that file imports
this one; both are kept valid Python 3.9, the Python of Slicer 5.6 and 5.8
(``Testing/test_supported_slicer.py`` parses them so). The rest of the extension (the logic,
the ``dkuxnet`` core, torch 2.x) needs Python 3.10 or newer, which Slicer ships from 5.10 on
(Python 3.12), so it is imported only when :func:`unsupported_reason` returns ``None``.
"""

from __future__ import annotations

import sys

MINIMUM_SLICER = "5.10"
MINIMUM_PYTHON = (3, 10)


def unsupported_reason(python_version=sys.version_info, slicer_version: str = "") -> str | None:
    """The message to show instead of the module panel on a too old Slicer; else ``None``.

    Args:
        python_version: ``sys.version_info`` of the running Slicer (or a tuple like it).
        slicer_version: ``slicer.app.applicationVersion``, named in the message when given.
    """
    if tuple(python_version[:2]) >= MINIMUM_PYTHON:
        return None
    python = ".".join(str(part) for part in python_version[:3])
    running = f"Slicer {slicer_version} (Python {python})" if slicer_version else f"Python {python}"
    return (
        f"DKUXNet Segment needs 3D Slicer {MINIMUM_SLICER} or newer, which runs Python "
        f"{MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or newer; this is {running}. Install a "
        "current Slicer from https://download.slicer.org and add the extension there."
    )
