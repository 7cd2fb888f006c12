"""`linear`: x @ w.T (+ bias) into a caller's buffer."""

from __future__ import annotations

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[M, N] = x[M, K] @ weight[N, K].T (+ bias[N]); `x` must be 2-D."""
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)
