"""`linear`: x @ w.T (+ bias), the same arithmetic for a row whatever the batch size.

A BLAS picks its kernel by shape: measured here (torch 2.13, MKL), a row's result changes
when a matmul has 1-3, 5-7 or 9-11 rows, so a session's output would depend on how many
others share its tick. The invariant path cuts the rows into fixed tiles of `ROW_TILE` and runs
them as one batched matmul of identical [ROW_TILE, K] @ [K, N] problems (at least two, since
a batch of one takes another code path): every row always goes through the same kernel.

Callers pass row counts padded with `pad_rows(n)` and keep their buffers that long; rows past n
hold stale data, are computed and never read (rows never mix in a matmul).
"""

from __future__ import annotations

import torch

ROW_TILE = 32
MIN_TILES = 2

_invariant = True


def use_invariant_kernels(enabled: bool) -> None:
    """Choose the batch-invariant path (the default) or plain single matmuls (`fast`)."""
    global _invariant
    _invariant = enabled


def invariant_kernels() -> bool:
    return _invariant


def pad_rows(n: int) -> int:
    """Rows to compute for n live rows: whole tiles, at least MIN_TILES of them."""
    return max(MIN_TILES, -(-n // ROW_TILE)) * ROW_TILE


def linear(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[M, N] = x[M, K] @ weight[N, K].T (+ bias[N]); M must come from `pad_rows`."""
    rows = x.shape[0]
    if x.is_cuda and _invariant:
        from foreground.kernels.triton import persistent_matmul

        persistent_matmul(x, weight, out)
    elif _invariant:
        if rows % ROW_TILE or rows < MIN_TILES * ROW_TILE:
            raise ValueError(f"linear over {rows} rows: pass pad_rows(n) rows (tiles of {ROW_TILE})")
        tiles = rows // ROW_TILE
        n_out, k = weight.shape
        torch.bmm(x.view(tiles, ROW_TILE, k), weight.t().expand(tiles, k, n_out),
                  out=out.view(tiles, ROW_TILE, n_out))
    else:
        torch.mm(x, weight.t(), out=out)
    if bias is not None:
        out.add_(bias)
    return out
