"""Where the files that ship with the extension live (bundled model, split lists)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODULE_DIR = PACKAGE_DIR.parent  # DKUXNetSegment/ (the Slicer module folder)
MODELS_DIR = MODULE_DIR / "Resources" / "Models"
DEFAULT_MODEL_NAME = "dkuxnet_la_lite.pt"
SPLITS_DIR = PACKAGE_DIR / "splits"


def default_model_path() -> Path | None:
    """The bundled left-atrium model, or ``None`` when this installation has none."""
    path = MODELS_DIR / DEFAULT_MODEL_NAME
    return path if path.is_file() else None
