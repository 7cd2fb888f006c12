"""Moshi's `rms_norm_f32`: RMSNorm computed in float32 (eps 1e-8) whatever the weights' dtype."""

from __future__ import annotations

import torch

from foreground.kernels import rms_norm

RMS_NORM_F32_EPS = 1e-8


class RmsNormF32:
    """Normalises rows of a [rows, dim] activation into a caller's buffer, allocating nothing.

    In float32 the kernel runs on the activations directly; in a narrower dtype they are
    copied into float32 buffers first and the result rounded back once, as moshi does.
    """

    def __init__(self, rows: int, dim: int, dtype: torch.dtype) -> None:
        self.scratch = torch.zeros(rows, 1)
        self.upcast = dtype != torch.float32
        self.x32 = torch.zeros(rows, dim) if self.upcast else None
        self.y32 = torch.zeros(rows, dim) if self.upcast else None

    def __call__(self, x: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[:n] = rms_norm(x[:n]) * scale, for x, out: [n, dim] and a float32 scale [dim]."""
        n = x.shape[0]
        if not self.upcast:
            return rms_norm(x, scale, RMS_NORM_F32_EPS, out, self.scratch[:n])
        x32, y32 = self.x32[:n], self.y32[:n]
        x32.copy_(x)
        rms_norm(x32, scale, RMS_NORM_F32_EPS, y32, self.scratch[:n])
        return out.copy_(y32)
