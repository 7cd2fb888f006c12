"""Rotary position embedding, `rotate_half` convention (as Llama and Mixtral in transformers)."""

from __future__ import annotations

import torch


def rotary_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotary_tables_(positions: torch.Tensor, inv_freq: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> None:
    """cos, sin: [..., head_dim/2] for integer `positions` [...] (angles in float32)."""
    torch.mul(positions.unsqueeze(-1), inv_freq, out=cos)
    torch.sin(cos, out=sin)
    cos.cos_()


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  tmp_a: torch.Tensor, tmp_b: torch.Tensor) -> None:
    """Rotate x [..., heads, head_dim] in place; cos/sin broadcast as [..., 1, head_dim/2];
    tmp_a/tmp_b: buffers shaped like one half of x."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    torch.mul(x1, sin, out=tmp_a)
    torch.mul(x2, sin, out=tmp_b)
    x1.mul_(cos).sub_(tmp_b)
    x2.mul_(cos).add_(tmp_a)
