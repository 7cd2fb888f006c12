"""Moshi's rotary embedding: interleaved pairs (d0, d1), (d2, d3), ... of each head rotate
together, unlike the `rotate_half` convention of `foreground.kernels.rotary` (which pairs d_i
with d_{i + D/2}). Frequencies and angles are computed exactly as `moshi.modules.rope`
does, in float32, so the rotated queries and keys match moshi's bit for bit."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim: int, max_period: float) -> torch.Tensor:
    """[head_dim / 2] float32, the same expression as moshi's `apply_rope`."""
    ds = torch.arange(head_dim // 2, dtype=torch.float32)
    return torch.exp(ds * (-math.log(max_period) * 2 / head_dim))


class InterleavedRope:
    """cos/sin tables for each row's position, and the in-place rotation of q and k."""

    def __init__(self, rows: int, heads: int, head_dim: int, max_period: float, dtype: torch.dtype) -> None:
        half = head_dim // 2
        self.freqs = rope_frequencies(head_dim, max_period)
        self.positions = torch.zeros(rows, 1)
        self.cos = torch.zeros(rows, 1, half)
        self.sin = torch.zeros(rows, 1, half)
        self.tmp_a = torch.zeros(rows, heads, half, dtype=dtype)
        self.tmp_b = torch.zeros(rows, heads, half, dtype=dtype)

    def set_positions(self, positions: torch.Tensor) -> None:
        """positions: [n] int64, the absolute frame index of each live row."""
        n = positions.shape[0]
        pos = self.positions[:n]
        pos.copy_(positions.unsqueeze(1))
        angle = self.cos[:n]
        torch.mul(self.freqs, pos.unsqueeze(2), out=angle)
        torch.sin(angle, out=self.sin[:n])
        angle.cos_()

    def rotate_(self, x: torch.Tensor) -> None:
        """x: [n, heads, head_dim] (a view into q or k), rotated in place like moshi's
        `qr * cos - qi * sin`, `qr * sin + qi * cos` on the (real, imaginary) pairs."""
        n, heads, head_dim = x.shape
        pairs = x.unflatten(2, (head_dim // 2, 2))
        real, imag = pairs[..., 0], pairs[..., 1]
        cos, sin = self.cos[:n], self.sin[:n]
        a, b = self.tmp_a[:n, :heads], self.tmp_b[:n, :heads]
        torch.mul(real, sin, out=a)
        torch.mul(imag, sin, out=b)
        real.mul_(cos).sub_(b)
        imag.mul_(cos).add_(a)
