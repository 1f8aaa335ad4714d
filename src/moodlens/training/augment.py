"""Batched augmentation on tensors, for faces from real video rather than FER's studio crops.

Everything is done for a whole batch at once (one affine grid, one blur), so
augmentation costs little next to the network on a 2-core CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (sigma in px; 0 = none) with a 7-tap separable kernel."""
    r = torch.arange(-3, 4, dtype=x.dtype, device=x.device)
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-(r[None] ** 2) / (2 * s**2))
    k = k / k.sum(1, keepdim=True)  # (B, 7)
    b, c, h, w = x.shape
    xp = F.pad(x.reshape(1, b * c, h, w), (3, 3, 3, 3), mode="replicate")
    kh = k.repeat_interleave(c, 0)[:, None, None, :]
    kv = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.conv2d(xp, kh, groups=b * c), kv, groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """x: (B, 1, H, W) in 0..1. Geometry, low resolution, blur, lighting, occlusion, flips."""
    b, _, h, w = x.shape
    dev = x.device
    u = lambda *s: torch.rand(*s, generator=g, device=dev)  # noqa: E731
    # geometry: rotation +-15 deg, scale 0.85..1.15, shift +-8 %, flip 50 %
    ang = (u(b) * 2 - 1) * math.radians(15) * strength
    scale = 1 + (u(b) * 2 - 1) * 0.15 * strength
    flip = torch.where(u(b) < 0.5, -1.0, 1.0)
    tx, ty = ((u(b) * 2 - 1) * 0.16 * strength for _ in range(2))
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # low resolution: 20 % of faces go down to 16..36 px and back up (small faces in wide shots)
    low = u(b) < 0.2 * strength
    if low.any():
        side = int(16 + u(1).item() * 20)
        small = F.interpolate(x[low], size=(side, side), mode="area")
        x[low] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # blur: 15 % get sigma 0.5..1.3 px (motion, focus, compression)
    sig = torch.where(u(b) < 0.15 * strength, 0.5 + 0.8 * u(b), torch.zeros(b, device=dev))
    if (sig > 0).any():
        x = _blur(x, sig)
    # lighting: gamma 0.7..1.4, contrast 0.7..1.3, brightness +-0.1
    gamma = torch.exp((u(b) * 2 - 1) * math.log(1.4) * strength)[:, None, None, None]
    x = x.clamp(1e-4, 1) ** gamma
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = (1 + (u(b) * 2 - 1) * 0.3 * strength)[:, None, None, None]
    bright = ((u(b) * 2 - 1) * 0.1 * strength)[:, None, None, None]
    x = (x - mean) * contrast + mean + bright
    # sensor noise
    x = x + torch.randn(x.shape, generator=g, device=dev) * (u(b) * 0.02 * strength)[:, None, None, None]
    # occlusion: 20 % get a random erased rectangle (hands, glasses, microphones)
    er = u(b) < 0.2 * strength
    if er.any():
        eh, ew = (h * (0.15 + u(b) * 0.25)).long(), (w * (0.15 + u(b) * 0.25)).long()
        y0, x0 = (u(b) * (h - eh)).long(), (u(b) * (w - ew)).long()
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        m = (yy >= y0[:, None, None]) & (yy < (y0 + eh)[:, None, None]) & (xx >= x0[:, None, None]) & (xx < (x0 + ew)[:, None, None])
        m = m & er[:, None, None]
        x = torch.where(m[:, None], u(b)[:, None, None, None].expand_as(x), x)
    return x.clamp(0, 1)
