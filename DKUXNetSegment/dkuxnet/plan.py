"""The plan step: training defaults that fit the dataset and the machine.

Like nnU-Net's experiment planner, but much smaller: a *fingerprint* of the dataset (median
voxel spacing and image size, read from the image headers) and a *profile* of the machine
(device, CPU cores and native bf16, or GPU memory) decide the target spacing, the patch size
and the batch. ``dkuxnet train`` runs it for every setting the user did not give and writes
the result into the run's ``config.json``; ``--set`` and ``--config`` always win.

The rules (ours; each a line of arithmetic, measured on the 2018 LA scans):

* **Voxel budget per patch.** What one dual iteration (2 + 2 patches through two networks)
  can afford: on a 2-core CPU with native bf16, 32 x 64 x 80 = 163,840 voxels (the bundled
  model's recipe; ~1 s per dual iteration with the ``lite`` network), scaled with the number
  of cores, halved without native bf16 and a quarter of that for the ``paper`` network; on a
  GPU the LA standard 80 x 112 x 112 (~1 M voxels) from 12 GB of memory on. Capped at
  80 x 112 x 112 everywhere.
* **Spacing.** The median spacing, coarsened by the smallest factor (1, 1.5, 2, 3, 4) at which
  the median image holds at most twice the budget on a CPU (the patch then sees about half the
  scan, enough context for one organ) or eight times on a GPU (full resolution for LA). For LA
  on a 2-core CPU: 0.625 mm -> 1.25 mm (the bundled model's recipe).
* **Patch.** The median image shape at that spacing, each side rounded up to the network's
  stride (16), then the side that is largest relative to the image shrunk by one stride until
  the budget holds (nnU-Net's rule).
* **Batch.** 2 labeled + 2 unlabeled patches, the method's batch (METHOD.md).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dkuxnet.config import ModelConfig

log = logging.getLogger(__name__)

#: Voxels per patch on a 2-core CPU with native bf16 (32 x 64 x 80, the bundled recipe).
CPU_BUDGET_2_CORES = 32 * 64 * 80
#: The LA standard patch (80 x 112 x 112 in (z, y, x)): the budget on a GPU, and the cap.
MAX_BUDGET = 80 * 112 * 112
#: GPU memory (GB) from which the full LA patch fits a dual iteration of ``lite`` with AMP.
GPU_FULL_BUDGET_GB = 12.0
SPACING_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class Fingerprint:
    """What the plan needs to know of a dataset.

    Attributes:
        spacing: median voxel spacing ``(x, y, z)`` in mm.
        shape: median image size ``(z, y, x)`` in voxels at its own spacing.
        cases: number of images read.
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    cases: int


@dataclass(frozen=True)
class Machine:
    """What the plan needs to know of the machine.

    Attributes:
        device: ``cpu`` or ``cuda``.
        cpu_cores: threads torch uses on the CPU.
        bf16: the CPU computes bf16 natively (see :func:`dkuxnet.device.cpu_has_native_bf16`).
        gpu_memory_gb: total memory of the GPU, or ``None`` on a CPU.
    """

    device: str
    cpu_cores: int
    bf16: bool
    gpu_memory_gb: float | None = None

    def describe(self) -> str:
        if self.device == "cuda":
            return f"GPU with {self.gpu_memory_gb:.0f} GB"
        return f"CPU, {self.cpu_cores} cores, {'native bf16' if self.bf16 else 'fp32 only'}"


#: The run-config setting (``section.key``) each planned :class:`Plan` field fills.
PLANNED_FIELDS: dict[str, str] = {
    "data.target_spacing": "target_spacing",
    "data.patch_size": "patch_size",
    "data.labeled_batch": "labeled_batch",
    "data.unlabeled_batch": "unlabeled_batch",
}


@dataclass(frozen=True)
class Plan:
    """The planned settings and why."""

    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    labeled_batch: int
    unlabeled_batch: int
    budget_voxels: int
    reasons: list[str] = field(default_factory=list)

    def as_overrides(self) -> dict[str, object]:
        """``section.key`` -> value (:data:`PLANNED_FIELDS`), as ``--set`` would give them."""
        values = {key: getattr(self, name) for key, name in PLANNED_FIELDS.items()}
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}


def _image_info(path: Path) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Spacing ``(x, y, z)`` and size ``(z, y, x)`` from the header (the whole file if needed)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        spacing = tuple(float(s) for s in reader.GetSpacing())
        size = tuple(int(s) for s in reversed(reader.GetSize()))
    except RuntimeError:
        from dkuxnet.io import read_volume

        volume = read_volume(path)
        spacing, size = tuple(volume.spacing), tuple(volume.array.shape)
    if len(spacing) != 3 or len(size) != 3:
        from dkuxnet.errors import InputError

        raise InputError(f"{path}: expected a 3D image, got {len(size)} dimension(s)")
    return spacing, size


def fingerprint(images: Iterable[str | os.PathLike[str]]) -> Fingerprint:
    """Median spacing and size of ``images`` (headers only where the format allows)."""
    spacings, sizes = [], []
    for path in images:
        spacing, size = _image_info(Path(path))
        spacings.append(spacing)
        sizes.append(size)
    if not spacings:
        from dkuxnet.errors import InputError

        raise InputError("cannot plan without images")
    sp = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    sh = np.median(np.asarray(sizes, dtype=np.float64), axis=0)
    return Fingerprint(
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        shape=(int(round(sh[0])), int(round(sh[1])), int(round(sh[2]))),
        cases=len(spacings),
    )


def this_machine(device: str = "auto") -> Machine:
    """The profile of this machine for the resolved ``device``."""
    import torch

    from dkuxnet.device import cpu_has_native_bf16, resolve_device

    dev = resolve_device(device)
    cores = max(1, torch.get_num_threads())
    if dev.type == "cuda":
        memory = torch.cuda.get_device_properties(dev).total_memory / 1e9
        return Machine("cuda", cores, cpu_has_native_bf16(), memory)
    return Machine("cpu", cores, cpu_has_native_bf16())


def voxel_budget(machine: Machine, model: ModelConfig) -> int:
    """Voxels per training patch this machine affords (see the module docstring)."""
    if machine.device == "cuda":
        memory = machine.gpu_memory_gb or 0.0
        budget = MAX_BUDGET * min(1.0, memory / GPU_FULL_BUDGET_GB)
    else:
        budget = CPU_BUDGET_2_CORES * machine.cpu_cores / 2
        if not machine.bf16:
            budget /= 2
    if model.feature_sizes[0] > 16:  # the paper-width network costs ~4x lite per voxel
        budget /= 4
    return int(max(model.total_stride**3, min(budget, MAX_BUDGET)))


def _round_up(value: float, step: int) -> int:
    return max(step, int(math.ceil(value / step)) * step)


def plan_patch(shape: Sequence[float], budget: int, stride: int) -> tuple[int, int, int]:
    """Patch ``(z, y, x)``: the image shape rounded up to ``stride``, shrunk to ``budget``."""
    patch = [_round_up(s, stride) for s in shape]
    while math.prod(patch) > budget:
        # shrink the side that covers most of its image axis (ties: the largest side)
        ratios = [(p / max(s, 1.0), p) for p, s in zip(patch, shape, strict=True)]
        axis = max(range(3), key=lambda a: ratios[a])
        if patch[axis] <= stride:
            candidates = [a for a in range(3) if patch[a] > stride]
            if not candidates:
                break
            axis = max(candidates, key=lambda a: patch[a])
        patch[axis] -= stride
    return patch[0], patch[1], patch[2]


def make_plan(fp: Fingerprint, machine: Machine, model: ModelConfig) -> Plan:
    """Target spacing, patch and batch for this dataset on this machine."""
    budget = voxel_budget(machine, model)
    image_voxels = math.prod(fp.shape)
    # how many patches' worth of image a patch may leave out: a GPU trains at full resolution
    # on a patch of the usual size; a CPU coarsens until the patch sees half the median image
    context = 8 if machine.device == "cuda" else 2
    factor = SPACING_FACTORS[-1]
    for f in SPACING_FACTORS:
        if image_voxels / f**3 <= context * budget:
            factor = f
            break
    spacing = tuple(round(s * factor, 4) for s in fp.spacing)
    shape_at = [n / factor for n in fp.shape]
    patch = plan_patch(shape_at, budget, model.total_stride)
    reasons = [
        f"dataset: {fp.cases} images, median spacing "
        f"{' x '.join(f'{s:g}' for s in fp.spacing)} mm (x, y, z), median size "
        f"{' x '.join(map(str, fp.shape))} (z, y, x)",
        f"machine: {machine.describe()} -> {budget:,} voxels per patch",
        f"spacing x{factor:g} -> {' x '.join(f'{s:g}' for s in spacing)} mm (median image "
        f"{' x '.join(str(round(s)) for s in shape_at)} voxels there)",
        f"patch {' x '.join(map(str, patch))} (z, y, x), batch 2 labeled + 2 unlabeled",
    ]
    return Plan(
        target_spacing=(spacing[0], spacing[1], spacing[2]),
        patch_size=patch,
        labeled_batch=2,
        unlabeled_batch=2,
        budget_voxels=budget,
        reasons=reasons,
    )
