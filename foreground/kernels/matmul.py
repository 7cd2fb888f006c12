"""`linear`: x @ w.T (+ bias), the same arithmetic for a row whatever the batch size.

A BLAS picks its kernel by shape: measured here (torch 2.13, MKL), a row's result changes
when a matmul has 1-3, 5-7 or 9-11 rows, so a session's output would depend on how many
others share its tick. The invariant path cuts the rows into fixed tiles of `ROW_TILE` and runs
them as one batched matmul of identical [ROW_TILE, K] @ [K, N] problems (at least two, since
a batch of one takes another code path): every row always goes through the same kernel.

Callers pass row counts padded with `pad_rows(n)` and keep their buffers that long; rows past n
hold stale data, are computed and never read (rows never mix in a matmul).

The tiles multiply by the weight as a row-major [K, N] matrix: a checkpoint's [N, K] weight is
transposed once, on its first use, and the copy kept for as long as the weight lives (MKL's
batched GEMM is faster on that layout: measured here 170 against 152 GFLOP/s for 32-row tiles
of a [256, 768] expert).
"""

from __future__ import annotations

import weakref

import torch

ROW_TILE = 32
MIN_TILES = 2

_invariant = True
_k_by_n: dict[tuple, tuple] = {}  # (base, offset, shape, strides) -> (ref to base, its version, [K, N] copy)


def use_invariant_kernels(enabled: bool) -> None:
    """Choose the batch-invariant path (the default) or plain single matmuls (`fast`)."""
    global _invariant
    _invariant = enabled


def invariant_kernels() -> bool:
    return _invariant


def k_by_n(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [N, K] as a row-major [K, N] matrix: its transpose when that is already
    contiguous, else a contiguous copy made on first use and kept while the weight (or the
    tensor it is a view of) lives and is not changed in place."""
    transposed = weight.t()
    if transposed.is_contiguous():
        return transposed
    base = weight._base if weight._base is not None else weight
    key = (id(base), weight.storage_offset(), tuple(weight.shape), weight.stride())
    version = _version(base)
    entry = _k_by_n.get(key)
    if entry is None or entry[0]() is not base or entry[1] != version:
        entry = (weakref.ref(base, lambda _, key=key: _k_by_n.pop(key, None)), version, transposed.contiguous())
        _k_by_n[key] = entry
    return entry[2]


def _version(tensor: torch.Tensor) -> int | None:
    """Its in-place change counter (None for an inference tensor, which has none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


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
        torch.bmm(x.view(tiles, ROW_TILE, k), k_by_n(weight).expand(tiles, k, n_out),
                  out=out.view(tiles, ROW_TILE, n_out))
    else:
        torch.mm(x, weight.t(), out=out)
    if bias is not None:
        out.add_(bias)
    return out
