"""Import weights saved by the public 3D UX-Net / DK-UXNet research code.

Their models name the encoder ``uxnet_3d`` (``downsample_layers``, ``stages``, ``norm0..3``;
block layers ``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``, ``gamma``) and the CNN decoder
``encoder1..5``, ``decoder5..1`` and ``out`` (MONAI blocks, whose inner names match ours).
Their kMaX decoder (``_kmax_transformer_layers``, ``_predcitor``, ``mlp`` ...) has a different
layer layout from ours and has no counterpart: those keys are reported as unexpected.
All key renames live in :data:`_PREFIX_RULES` and :func:`remap_reference_key`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from dkuxnet.errors import CheckpointError

log = logging.getLogger(__name__)

# (pattern on the public key, replacement in our naming); the first match wins.
_PREFIX_RULES: tuple[tuple[str, str], ...] = (
    (r"^uxnet_3d\.downsample_layers\.", "encoder.downsamples."),
    (r"^uxnet_3d\.norm(\d+)\.", r"encoder.out_norms.\1."),
    (r"^uxnet_3d\.stages\.(\d+)\.(\d+)\.pwconv1\.", r"encoder.stages.\1.\2.expand."),
    (r"^uxnet_3d\.stages\.(\d+)\.(\d+)\.pwconv2\.", r"encoder.stages.\1.\2.project."),
    (r"^uxnet_3d\.stages\.", "encoder.stages."),
    (r"^encoder1\.", "cnn_decoder.skip_blocks.0."),
    (r"^encoder2\.", "cnn_decoder.skip_blocks.1."),
    (r"^encoder3\.", "cnn_decoder.skip_blocks.2."),
    (r"^encoder4\.", "cnn_decoder.skip_blocks.3."),
    (r"^encoder5\.", "cnn_decoder.bottleneck."),
    (r"^decoder5\.", "cnn_decoder.up_blocks.0."),
    (r"^decoder4\.", "cnn_decoder.up_blocks.1."),
    (r"^decoder3\.", "cnn_decoder.up_blocks.2."),
    (r"^decoder2\.", "cnn_decoder.up_blocks.3."),
    (r"^decoder1\.", "cnn_decoder.refine."),
    (r"^out\.", "cnn_decoder.head."),
)


@dataclass
class ImportReport:
    """What :func:`load_reference_weights` did.

    Attributes:
        loaded: our parameter names that received a public weight.
        missing: our parameter names that received nothing (kept at their initial values).
        unexpected: public keys with no counterpart in our model.
        mismatched: public key -> (their shape, our shape) where a name matched but the shape
            did not (e.g. a different kernel size); not loaded.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches"
        )


def remap_reference_key(key: str) -> str | None:
    """Our name for a key of the public code, or ``None`` when we have no counterpart."""
    key = key.removeprefix("module.")
    for pattern, replacement in _PREFIX_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return None


def _extract_state_dict(obj: object, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
    raise CheckpointError(f"{path}: not a state dict of the public 3D UX-Net / DK-UXNet code")


def load_reference_weights(
    model: nn.Module,
    path: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> ImportReport:
    """Copy the matching weights of a public-code checkpoint into ``model``.

    Args:
        model: a :class:`~dkuxnet.model.DualKMaXUXNet`.
        path: a ``.pth``/``.pt`` file (loaded with ``weights_only=True``) or a state dict.

    Returns:
        An :class:`ImportReport`; it is also logged.
    """
    if isinstance(path, Mapping):
        source: Mapping[str, torch.Tensor] = _extract_state_dict(path, "<state dict>")
        name = "<state dict>"
    else:
        name = os.fspath(path)
        try:
            raw = torch.load(name, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"{name}: file not found") from exc
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
            raise CheckpointError(
                f"{name}: cannot be read as a weights-only checkpoint ({exc})"
            ) from exc
        source = _extract_state_dict(raw, name)
    ours = model.state_dict()
    report = ImportReport()
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        target = remap_reference_key(key)
        if target is None or target not in ours:
            report.unexpected.append(key)
            continue
        if tuple(ours[target].shape) != tuple(tensor.shape):
            report.mismatched[key] = (tuple(tensor.shape), tuple(ours[target].shape))
            continue
        updates[target] = tensor
    report.loaded = sorted(updates)
    report.missing = sorted(k for k in ours if k not in updates)
    model.load_state_dict({**ours, **updates})
    log.info("imported %s: %s", name, report.summary())
    return report
