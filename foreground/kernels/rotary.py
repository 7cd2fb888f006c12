"""Rotary position embedding (as Llama and Mixtral in transformers), as one complex multiply.

Checkpoints use the `rotate_half` convention: dimension i of a head pairs with i + head_dim/2.
`interleave_rotary_rows` reorders the rows of a q or k projection once at load so that each pair
sits side by side; a head of q (or k) is then head_dim/2 complex numbers and the rotation is one
element-wise complex multiply by e^(i * position * inv_freq), instead of six real ops on halves.
Attention only ever takes dot products of q with k, which the same reordering of both leaves
unchanged (v and the output projection keep the checkpoint's order).
"""

from __future__ import annotations

import torch


def rotary_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A [heads * head_dim, K] projection with each head's rows in the order 0, h, 1, h+1, ...
    (h = head_dim / 2): the pairs that rotate together become adjacent."""
    head_dim = weight.shape[0] // heads
    half = head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)
    return weight.view(heads, head_dim, -1)[:, order].reshape(weight.shape)


def rotary_table_(positions: torch.Tensor, inv_freq: torch.Tensor, angles: torch.Tensor,
                  rotation: torch.Tensor) -> None:
    """rotation [..., head_dim/2] complex64 = e^(i * angle) for integer `positions` [...];
    angles: a float32 buffer shaped like rotation (angles in float32, as transformers)."""
    torch.mul(positions.unsqueeze(-1), inv_freq, out=angles)
    parts = torch.view_as_real(rotation)
    torch.cos(angles, out=parts[..., 0])
    torch.sin(angles, out=parts[..., 1])


def apply_rotary_(x: torch.Tensor, rotation: torch.Tensor) -> None:
    """Rotate x [..., heads, head_dim] (interleaved pairs, see above) in place; rotation
    broadcasts as [..., 1, head_dim/2] complex64."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    torch.mul(pairs, rotation, out=pairs)
