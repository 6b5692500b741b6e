"""The web front end of DKUXNetSegment: Segment and Fine-tune in a browser (``dkuxnet web``).

A second front end over the same pieces as the Slicer module: the MRML scene, views and widgets
come from trame-slicer (``slicer-core`` outside the Slicer application), the work from
``DKUXNetSegmentLib.logic`` and ``DKUXNetSegmentLib.slicer_bridge``, which run Segment and
Fine-tune as the same background ``dkuxnet`` jobs with the same bundled model.

* ``data_folder`` -- the only files a page may read or write; refuses paths outside it and
  uploads that are not readable 3D images (no slicer, no trame);
* ``charts`` -- the loss and validation-Dice curves as small SVG line charts (no slicer,
  no trame);
* ``session`` -- what one page does with the scene: load volumes, Segment, Fine-tune, save
  (slicer, no trame);
* ``app`` -- the trame page: views, panels, a timer that polls the session.

Nothing here is imported by the ``dkuxnet`` core or the Slicer module; ``dkuxnet web`` imports
``app`` only when it runs, after checking :data:`REQUIRED_MODULES`.
"""

from __future__ import annotations

import importlib.util

#: import name -> what to install; ``pip install -e ".[web]"`` brings them all.
REQUIRED_MODULES: dict[str, str] = {
    "slicer": "slicer-core",
    "slicer_layer_dm": "slicer-layer-dm",
    "trame": "trame",
    "trame_vuetify": "trame-vuetify",
    "trame_slicer": "trame-slicer",
}


def missing_modules() -> list[str]:
    """The packages of :data:`REQUIRED_MODULES` that this Python cannot import."""
    return [
        package
        for name, package in REQUIRED_MODULES.items()
        if importlib.util.find_spec(name) is None
    ]
