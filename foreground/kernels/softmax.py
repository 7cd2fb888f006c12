"""In-place softmax over the last dimension (rows of -inf only stay finite: never produced here,
since every query sees at least itself)."""

from __future__ import annotations

import torch


def softmax_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """x: [..., N], softmaxed in place; scratch: x.shape[:-1] + (1,)."""
    torch.amax(x, dim=-1, keepdim=True, out=scratch)
    x.sub_(scratch).exp_()
    torch.sum(x, dim=-1, keepdim=True, out=scratch)
    return x.div_(scratch)
