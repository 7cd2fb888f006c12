"""Operators for the tick's hot path, written to allocate nothing (every result goes to a
caller's buffer) and to reduce each row the same way whatever the batch size.

One operator per file: `matmul`, `rms_norm`, `softmax`, `rotary`, `attention`. On CUDA tensors
`linear`, `rms_norm` and `attend_slots` run the Triton kernels of `foreground.kernels.triton`
(a persistent matmul, row-wise RMSNorm, split-KV attention with a fixed split size).
`use_invariant_kernels(False)` selects plain single matmuls: faster where a BLAS is, but a
session's outputs then depend on its batch.
"""

from foreground.kernels.attention import attend_slots
from foreground.kernels.matmul import linear, pad_rows, use_invariant_kernels
from foreground.kernels.rms_norm import rms_norm
from foreground.kernels.rotary import apply_rotary_
from foreground.kernels.softmax import softmax_

__all__ = ["apply_rotary_", "attend_slots", "linear", "pad_rows", "rms_norm", "softmax_", "use_invariant_kernels"]
