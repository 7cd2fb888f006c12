"""RMSNorm (as Mixtral's): x * rsqrt(mean(x^2) + eps) * weight, into a caller's buffer."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor,
             scratch: torch.Tensor) -> torch.Tensor:
    """x, out: [M, D]; scratch: [M, 1]. Each row is reduced on its own."""
    if x.is_cuda:
        from foreground.kernels.triton import triton_rms_norm

        return triton_rms_norm(x, weight, eps, out)
    torch.mul(x, x, out=out)
    torch.mean(out, dim=-1, keepdim=True, out=scratch)
    scratch.add_(eps).rsqrt_()
    torch.mul(x, scratch, out=out)
    return out.mul_(weight)
