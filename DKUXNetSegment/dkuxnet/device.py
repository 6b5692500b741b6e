"""Choosing the torch device once, from the user's ``auto`` | ``cpu`` | ``cuda`` setting."""

from __future__ import annotations

import torch

from dkuxnet.errors import ConfigError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device setting into a ``torch.device``.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``,
            or a ``torch.device`` (checked the same way).

    Returns:
        The device to put networks and windows on.

    Raises:
        ConfigError: an unknown name, or CUDA asked for on a machine without a usable CUDA
            device (the message says what was found).
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = torch.version.cuda
            reason = (
                "this torch build has no CUDA support (a CPU-only build)"
                if built is None
                else f"torch was built for CUDA {built} but no usable GPU or driver was found"
            )
            raise ConfigError(f"device 'cuda' requested but {reason}; use --device cpu or auto")
        try:
            device = torch.device(text)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {name!r}: {exc}") from exc
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} requested but only {count} CUDA device(s) exist")
        return device
    raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
