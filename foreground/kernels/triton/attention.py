"""Split-KV attention with a fixed split SIZE, for each session over its own KV cache.

Each program takes a block of query rows of one (session, KV head) and ONE split of
`SPLIT_SIZE` cache entries, and writes that split's partial max, sum and weighted values; a
second kernel combines the partials of a row in split order. A fixed split size (not a fixed
number of splits) means a query's reduction is the same however many queries or sessions a
step holds. Same shapes as `foreground.kernels.attention.attend_slots`: q [B, KVH, R, D]
(scaled, rotated), caches [B, KVH, S, D], additive mask [B, T, S] (query row r uses mask row
r % T).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SPLIT_SIZE = 64
BLOCK_R = 16


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, R, S, T, KVH, SPLITS,
                  D: tl.constexpr, BR: tl.constexpr, SPLIT: tl.constexpr):
    bh, rblock, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = bh // KVH
    rows = rblock * BR + tl.arange(0, BR)
    ents = split * SPLIT + tl.arange(0, SPLIT)
    dims = tl.arange(0, D)
    row_ok, ent_ok = rows < R, ents < S
    q = tl.load(q_ptr + (bh * R + rows[:, None]) * D + dims[None, :], mask=row_ok[:, None], other=0.0)
    k = tl.load(k_ptr + (bh * S + ents[:, None]) * D + dims[None, :], mask=ent_ok[:, None], other=0.0)
    v = tl.load(v_ptr + (bh * S + ents[:, None]) * D + dims[None, :], mask=ent_ok[:, None], other=0.0)
    bias = tl.load(mask_ptr + (b * T + rows[:, None] % T) * S + ents[None, :],
                   mask=row_ok[:, None] & ent_ok[None, :], other=float("-inf"))
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") + bias
    m = tl.max(scores, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(scores - m_safe[:, None])
    l = tl.sum(p, axis=1)
    acc = tl.dot(p, v, input_precision="ieee")
    part = (bh * SPLITS + split) * R + rows
    tl.store(m_ptr + part, m, mask=row_ok)
    tl.store(l_ptr + part, l, mask=row_ok)
    tl.store(acc_ptr + part[:, None] * D + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, R, SPLITS, D: tl.constexpr, BR: tl.constexpr):
    bh, rblock = tl.program_id(0), tl.program_id(1)
    rows = rblock * BR + tl.arange(0, BR)
    row_ok = rows < R
    dims = tl.arange(0, D)
    top = tl.full((BR,), float("-inf"), tl.float32)
    for s in range(SPLITS):
        top = tl.maximum(top, tl.load(m_ptr + (bh * SPLITS + s) * R + rows, mask=row_ok, other=float("-inf")))
    top = tl.where(top == float("-inf"), 0.0, top)  # rows past R: nothing to combine
    total = tl.zeros((BR,), tl.float32)
    out = tl.zeros((BR, D), tl.float32)
    for s in range(SPLITS):
        part = (bh * SPLITS + s) * R + rows
        m = tl.load(m_ptr + part, mask=row_ok, other=float("-inf"))
        scale = tl.exp(m - top)
        total += tl.load(l_ptr + part, mask=row_ok, other=0.0) * scale
        out += tl.load(acc_ptr + part[:, None] * D + dims[None, :], mask=row_ok[:, None], other=0.0) * scale[:, None]
    tl.store(out_ptr + (bh * R + rows[:, None]) * D + dims[None, :], out / tl.where(total == 0.0, 1.0, total)[:, None],
             mask=row_ok[:, None])


def split_kv_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    b, kvh, r, d = q.shape
    s, t = k_cache.shape[2], mask.shape[1]
    splits = triton.cdiv(s, SPLIT_SIZE)
    m = torch.empty(b * kvh, splits, r, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty(b * kvh, splits, r, d, device=q.device)
    grid = (b * kvh, triton.cdiv(r, BLOCK_R))
    _split_kernel[(*grid, splits)](q, k_cache, v_cache, mask, m, l, acc, r, s, t, kvh, splits,
                                   D=d, BR=BLOCK_R, SPLIT=SPLIT_SIZE)
    _combine_kernel[grid](m, l, acc, out, r, splits, D=d, BR=BLOCK_R)
    return out
