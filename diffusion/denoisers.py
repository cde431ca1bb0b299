"""Denoisers: an MLP for 2-D points and a small UNet for 1-channel images (28x28 or 8x8).

Both take (x_t, t) with integer t and return a tensor shaped like x_t (eps, x_0 or v by objective),
or twice the channels when they also predict their variance (`out_dim` / `out_channels`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding", "MLPDenoiser", "UNet"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (the Transformer's positional encoding), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class MLPDenoiser(nn.Module):
    """Residual MLP on (x, embedding(t)) for low-dimensional data."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, time_dim: int = 64, out_dim: int | None = None):
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim or dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.time(timestep_embedding(t, self.time_dim))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, conv, plus the time embedding as a per-channel shift; twice, with a skip."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv, self.proj = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, HW, C) each
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """A small DDPM UNet: `widths` channels per resolution (one down-sampling between levels), two
    residual blocks per level, optional attention at the lowest resolution."""

    def __init__(self, channels: int = 1, widths: tuple[int, ...] = (32, 64), attention: bool = True, groups: int = 8,
                 out_channels: int | None = None):
        super().__init__()
        self.time_dim = 4 * widths[0]
        self.time = nn.Sequential(nn.Linear(widths[0], self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim))
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        cin = widths[0]
        for width in widths:
            self.down.append(nn.ModuleList([_ResBlock(cin, width, self.time_dim, groups),
                                             _ResBlock(width, width, self.time_dim, groups)]))
            cin = width
        self.mid = _Attention(cin, groups) if attention else nn.Identity()
        for width in reversed(widths):
            self.up.append(nn.ModuleList([_ResBlock(cin + width, width, self.time_dim, groups),
                                           _ResBlock(width, width, self.time_dim, groups)]))
            cin = width
        self.out = nn.Sequential(nn.GroupNorm(min(groups, cin), cin), nn.SiLU(),
                                 nn.Conv2d(cin, out_channels or channels, 3, padding=1))
        self.base = widths[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.base))
        h, skips = self.inp(x), []
        for level, (block1, block2) in enumerate(self.down):
            if level:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = block2(block1(h, emb), emb)
            skips.append(h)
        h = self.mid(h)
        for block1, block2 in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block2(block1(torch.cat([h, skip], dim=1), emb), emb)
        return self.out(h)
