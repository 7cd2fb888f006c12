"""The GPU path: Triton kernels with the same invariance contract as the torch CPU path.

- `matmul`: a persistent matmul with ONE tile configuration for every shape, so an output
  element's reduction over K always runs in the same BLOCK_K steps, whatever M is.
- `rms_norm`: one program per row.
- `attention`: split-KV attention with a fixed split SIZE (never a fixed number of splits),
  partials combined in split order.

On this CPU-only machine they run under `TRITON_INTERPRET=1` (slow: tests only, small shapes).
"""

from foreground.kernels.triton.attention import split_kv_attention
from foreground.kernels.triton.matmul import persistent_matmul
from foreground.kernels.triton.rms_norm import triton_rms_norm

__all__ = ["persistent_matmul", "split_kv_attention", "triton_rms_norm"]
