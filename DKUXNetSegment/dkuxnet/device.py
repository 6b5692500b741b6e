"""Choosing the torch device, and its mixed precision, once from the user's settings.

The devices a user can choose, and what the front ends call them, are listed here and nowhere
else: the commands, the Slicer panel and the web page read :data:`DEVICE_CHOICES`. Torch is
imported when a device is resolved, not with this module, so that they can.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

from dkuxnet.config import AMP_CHOICES
from dkuxnet.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The device settings a user chooses from (:func:`resolve_device` also takes ``cuda:N``).
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: What a panel shows for each of :data:`DEVICE_CHOICES`.
DEVICE_LABELS: dict[str, str] = {"auto": "Auto", "cpu": "CPU", "cuda": "GPU (CUDA)"}
#: Set to 0 or 1 to override the CPU bf16 detection (for machines it gets wrong).
CPU_BF16_ENV = "DKUXNET_CPU_BF16"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``).

    oneDNN also runs bf16 on CPUs without those instructions, by emulation, which is slower
    than fp32; so ``auto`` only picks bf16 when the instructions are there. Read from
    ``/proc/cpuinfo`` (Linux); elsewhere ``False`` unless ``DKUXNET_CPU_BF16=1``.
    """
    import torch

    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    mkldnn_ok = bool(torch.backends.mkldnn.is_available())
    return mkldnn_ok and ("avx512_bf16" in flags or "amx_bf16" in flags)


def autocast_dtype(device: torch.device, setting: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` under a mixed-precision ``setting`` (None = fp32).

    ``auto`` = fp16 on a GPU, bf16 on a CPU with native bf16 instructions, fp32 otherwise;
    ``bf16`` / ``fp16`` force that type; ``off`` = fp32.

    Raises:
        ConfigError: an unknown setting, or ``fp16`` on a CPU (fp16 autocast there is slower
            than fp32 and loses range; use ``bf16``).
    """
    import torch

    if setting not in AMP_CHOICES:
        raise ConfigError(f"unknown precision {setting!r}; choose one of {', '.join(AMP_CHOICES)}")
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 mixed precision needs a GPU; on a CPU use bf16 or auto")
        return torch.float16
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


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
    import torch

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
