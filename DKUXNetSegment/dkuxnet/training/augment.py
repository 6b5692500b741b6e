"""The strong view: intensity perturbations on top of the shared spatial transform.

Network A sees the strong view, network B the weak one (METHOD.md, figure 2 of the paper).
Only intensities change, so every voxel of the two views still corresponds. All randomness
comes from a ``torch.Generator`` seeded by the caller (per iteration), so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter


def strong_view(
    images: torch.Tensor,
    generator: torch.Generator,
    noise_std: float = 0.1,
    gamma: float = 0.3,
    blur_sigma: float = 1.0,
    bias_coeff: float = 0.3,
) -> torch.Tensor:
    """Randomly perturbed copy of ``images`` ``(B, C, *S)`` (z-scored intensities).

    Per item: gamma on the min-max rescaled image (``exp(U(-g, g))``), contrast and brightness
    jitter, a smooth multiplicative bias field, Gaussian blur with probability 0.3, and
    Gaussian noise of standard deviation ``U(0, noise_std)``.
    """
    out = images.clone()
    batch = images.shape[0]
    spatial = images.shape[2:]
    dims = len(spatial)

    def uniform(low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=generator))

    for b in range(batch):
        x = out[b]
        if gamma > 0:
            lo, hi = x.min(), x.max()
            scale = (hi - lo).clamp_min(1e-6)
            x = ((x - lo) / scale).clamp(0, 1) ** torch.exp(torch.tensor(uniform(-gamma, gamma)))
            x = x * scale + lo
        x = (x - x.mean()) * uniform(0.75, 1.25) + x.mean() + uniform(-0.1, 0.1)
        if bias_coeff > 0:
            coarse = torch.randn((1, 1) + (3,) * dims, generator=generator)
            mode = "trilinear" if dims == 3 else "bilinear"
            field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)[0]
            x = x * torch.exp(bias_coeff * uniform(0, 1) * field)
        if blur_sigma > 0 and uniform(0, 1) < 0.3:
            sigma = uniform(0.25, blur_sigma)
            x = GaussianFilter(dims, sigma)(x.unsqueeze(0))[0]
        if noise_std > 0:
            x = x + uniform(0, noise_std) * torch.randn(x.shape, generator=generator)
        out[b] = x
    return out
