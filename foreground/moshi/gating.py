"""Moshi's feed-forward block: `ActivationGating` with silu, i.e. a SwiGLU.

linear_in maps dim -> 2 * hidden; the first half goes through silu and multiplies the second
half; linear_out maps back. silu is computed as x / (1 + exp(-x)): torch's own silu rounds an
element differently depending on where it falls in a vectorised loop (so on the batch size),
while exp, negation, addition and division do not.
"""

from __future__ import annotations

import torch

from foreground.kernels import linear
from foreground.moshi.lm_weights import GatingWeights


class SiluGating:
    """Buffers for up to `rows` rows and hidden widths up to `max_hidden`."""

    def __init__(self, rows: int, max_hidden: int, dtype: torch.dtype) -> None:
        # Flat storage, viewed per call as a contiguous [rows, width] of that call's width.
        self._gate = torch.zeros(rows * 2 * max_hidden, dtype=dtype)
        self._act = torch.zeros(rows * max_hidden, dtype=dtype)

    def __call__(self, x: torch.Tensor, weights: GatingWeights, out: torch.Tensor, live: int) -> torch.Tensor:
        """out = gating(x) for x, out: [rows, dim] (rows from `pad_rows`); rows past `live`
        are multiplied through the linears but not activated (their values are never read)."""
        rows, hidden = x.shape[0], weights.hidden
        gate = linear(x, weights.linear_in, self._gate[: rows * 2 * hidden].view(rows, 2 * hidden))
        act = self._act[: rows * hidden].view(rows, hidden)
        silu_half, linear_half, a = gate[:live, :hidden], gate[:live, hidden:], act[:live]
        torch.neg(silu_half, out=a)
        a.exp_().add_(1.0)
        torch.div(silu_half, a, out=a)
        a.mul_(linear_half)
        return linear(act, weights.linear_out, out)
