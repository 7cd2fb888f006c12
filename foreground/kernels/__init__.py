"""Operators for the tick's hot path, written to allocate nothing (every result goes to a
caller's buffer) and to reduce each row the same way whatever the batch size.

One operator per file: `matmul`, `rms_norm`, `softmax`, `rotary`, `attention`.
"""

from foreground.kernels.attention import attend_slots
from foreground.kernels.matmul import linear
from foreground.kernels.rms_norm import rms_norm
from foreground.kernels.rotary import apply_rotary_
from foreground.kernels.softmax import softmax_

__all__ = ["apply_rotary_", "attend_slots", "linear", "rms_norm", "softmax_"]
