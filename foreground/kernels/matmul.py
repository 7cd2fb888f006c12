"""`linear`: x @ w.T (+ bias), the same arithmetic for a row whatever the batch size.

A BLAS picks its kernel by shape: measured here (torch 2.13, MKL, 2 threads), a row's result
changes when a matmul has 1-3, 5-7 or 9-11 rows, so a session's output would depend on how many
others share its tick. The invariant path therefore never multiplies fewer than MIN_TILES tiles
of ROW_TILE rows: callers pass row counts padded with `pad_rows(n)` and keep their buffers that
long; rows past n hold stale data, are computed and never read (rows never mix in a matmul).

On those row counts, two ways give every row the same arithmetic:
- tiles: the rows as a batch of identical [ROW_TILE, K] @ [K, N] problems (`torch.bmm`), so every
  row goes through the same kernel by construction;
- one `torch.mm` over all the rows, where the BLAS computes a row the same way for every padded
  row count. Measured here (MKL, 1 and 2 threads) for the reference model's weight shapes and
  every multiple of 32 rows up to 4096: bitwise equal to the tiles (MKL differs only below 12
  rows), and up to 25% faster (one GEMM keeps both cores busy, where a batch of 13 tiles leaves
  one idle for the 13th).
The second is a property of the BLAS, not a guarantee, so it is checked: the first time a
[K, N] shape comes by (with its dtype, the thread count and the weight's strides: a BLAS picks
its kernel by layout too, and some callers pass a transposed view such as the vocoder's
`basis.t()`), `_one_gemm_is_invariant` compares one GEMM with the tiles at several row counts, on
a weight laid out as the caller's, and the shape uses the tiles unless all are bitwise equal.
A replica runs one warm-up tick before it serves (`engine.warm_up`), so no check lands
in a live session's tick.
"""

from __future__ import annotations

import torch

ROW_TILE = 32
MIN_TILES = 2
PROBE_ROWS = (64, 96, 128, 160, 224, 256)  # padded row counts the check compares

_invariant = True
_one_gemm: dict[tuple, bool] = {}  # (K, N, dtype, threads, weight strides) -> one GEMM is row-invariant


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
        n_out, k = weight.shape
        if _one_gemm_is_invariant(weight, x.dtype):
            torch.mm(x, weight.t(), out=out)
        else:
            _tiles(x, weight, out)
    else:
        torch.mm(x, weight.t(), out=out)
    if bias is not None:
        out.add_(bias)
    return out


def _tiles(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    tiles = x.shape[0] // ROW_TILE
    n_out, k = weight.shape
    torch.bmm(x.view(tiles, ROW_TILE, k), weight.t().expand(tiles, k, n_out),
                     out=out.view(tiles, ROW_TILE, n_out))


def _one_gemm_is_invariant(like: torch.Tensor, dtype: torch.dtype) -> bool:
    """Is one GEMM row-invariant for weights shaped and laid out as `like` ([N, K])?"""
    n, k = like.shape
    key = (k, n, dtype, torch.get_num_threads(), like.stride())
    known = _one_gemm.get(key)
    if known is None:
        gen = torch.Generator().manual_seed(k * 7919 + n)
        x = torch.randn(PROBE_ROWS[-1], k, generator=gen).to(dtype)
        weight = torch.empty_strided(like.shape, like.stride(), dtype=dtype)
        weight.copy_(torch.randn(n, k, generator=gen))
        tiled = torch.empty(PROBE_ROWS[-1], n, dtype=dtype)
        _tiles(x, weight, tiled)
        known = all(torch.equal(torch.mm(x[:rows], weight.t()), tiled[:rows]) for rows in PROBE_ROWS)
        _one_gemm[key] = known
    return known
