"""Attention of each session's new tokens over that session's own KV cache.

Every session is one batch entry of the same shape (its whole cache: sinks plus ring window),
so a session's result does not depend on who else is in the batch; what a query may see is
decided by an additive mask (empty or future entries: -inf).
"""

from __future__ import annotations

import torch

from foreground.kernels.softmax import softmax_


def attend_slots(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 mask: torch.Tensor, scores: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention for B sessions.

    q: [B, KVH, G*T, D] (already scaled and rotated), k_cache/v_cache: [B, KVH, S, D],
    mask: [B, T, S] additive, scores: [B, KVH, G*T, S] (contiguous), out: [B, KVH, G*T, D].
    """
    if q.is_cuda:  # the GPU path: split-KV with a fixed split size
        from foreground.kernels.triton import split_kv_attention

        return split_kv_attention(q, k_cache, v_cache, mask, out)
    b, kvh, rows, d = q.shape
    s = k_cache.shape[2]
    t = mask.shape[1]
    torch.bmm(q.view(b * kvh, rows, d), k_cache.reshape(b * kvh, s, d).transpose(1, 2),
              out=scores.view(b * kvh, rows, s))
    scores.view(b, kvh, rows // t, t, s).add_(mask.view(b, 1, 1, t, s))
    softmax_(scores)
    torch.bmm(scores.view(b * kvh, rows, s), v_cache.reshape(b * kvh, s, d),
              out=out.view(b * kvh, rows, d))
    return out
