"""Causal 1-D convolutions streamed for many sessions at once on the batch-invariant `linear`.

Activations are time-major, [slot, time, channel]: rows (slot, time) are what `linear`
multiplies, channels are its columns, and a row's arithmetic never depends on the other rows.

Convolution as im2col. Each slot keeps the last `history` input frames of its stream
(moshi's `StreamingConv1d.previous`; zeros for a fresh stream, or its first sample repeated with
replicate padding). A step lays [kept frames | new frames] out in a window, copies the window's
unfolded view (one row per output frame: channel-major, then tap) into a row buffer, and
multiplies it by the weight seen as a [C_out, C_in * K] matrix.

Transposed convolution with kernel 2 * stride (every one in Mimi). An input frame times the
weight seen as a [2 * stride * C_out, C_in] matrix gives two blocks of `stride` output frames:
the first belongs to this frame's output, the second overlaps the next frame's. The last
frame's second block is the partial tail a slot keeps for its next step (moshi's
`StreamingConvTranspose1d.partial`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.kernels import linear, pad_rows
from foreground.moshi.mimi_weights import Init, WeightSource


def keep_state(state: torch.Tensor, new: torch.Tensor, active: torch.Tensor | None) -> None:
    """state <- new for the active slots (all of them when `active` is None); the others keep
    theirs, as if this step had not happened (moshi's `exec_mask`)."""
    if active is None:
        state.copy_(new)
    else:
        torch.where(active.view(-1, *[1] * (state.dim() - 1)), new, state, out=state)


@dataclass(frozen=True, slots=True)
class ConvWeights:
    matrix: torch.Tensor  # [C_out, C_in * K], columns in im2col order
    bias: torch.Tensor | None
    in_channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1

    @property
    def out_channels(self) -> int:
        return self.matrix.shape[0]

    @property
    def history(self) -> int:
        """Input frames a slot keeps between steps: the receptive field minus one stride."""
        return (self.kernel_size - 1) * self.dilation + 1 - self.stride

    @classmethod
    def take(cls, source: WeightSource, prefix: str, in_channels: int, out_channels: int,
             kernel_size: int, stride: int = 1, dilation: int = 1, bias: bool = True) -> ConvWeights:
        """`prefix.weight` [C_out, C_in, K] (and `prefix.bias`) of an `nn.Conv1d`."""
        weight = source.take(f"{prefix}.weight", (out_channels, in_channels, kernel_size), Init.FAN_IN)
        b = None
        if bias:
            b = source.take(f"{prefix}.bias", (out_channels,), Init.FAN_IN, fan_in=in_channels * kernel_size)
        return cls(weight.reshape(out_channels, -1).contiguous(), b, in_channels, kernel_size, stride, dilation)


@dataclass(frozen=True, slots=True)
class ConvTrWeights:
    matrix: torch.Tensor  # [(2 blocks, stride, C_out), C_in]
    bias: torch.Tensor | None
    stride: int
    out_channels: int

    @classmethod
    def take(cls, source: WeightSource, prefix: str, in_channels: int, out_channels: int,
             stride: int) -> ConvTrWeights:
        """`prefix.weight` [C_in, C_out, 2 * stride] and `prefix.bias` of an `nn.ConvTranspose1d`."""
        kernel = 2 * stride
        weight = source.take(f"{prefix}.weight", (in_channels, out_channels, kernel), Init.FAN_IN)
        bias = source.take(f"{prefix}.bias", (out_channels,), Init.FAN_IN, fan_in=out_channels * kernel)
        matrix = weight.permute(2, 1, 0).reshape(kernel * out_channels, in_channels).contiguous()
        return cls(matrix, bias, stride, out_channels)


@dataclass(frozen=True, slots=True)
class DepthwiseConvTrWeights:
    """Mimi's learnt upsampling: a transposed conv with one filter per channel, no bias."""

    taps: torch.Tensor  # [2 * stride, C]
    stride: int

    @classmethod
    def take(cls, source: WeightSource, prefix: str, channels: int, stride: int) -> DepthwiseConvTrWeights:
        weight = source.take(f"{prefix}.weight", (channels, 1, 2 * stride), Init.FAN_IN)
        return cls(weight[:, 0, :].t().contiguous(), stride)


class CausalConv1d:
    """One convolution's stream for `max_slots` sessions, `t_in` new input frames a step.

    The caller writes a step's input into `input(batch)`, then calls `step(batch)`.
    """

    def __init__(self, weights: ConvWeights, max_slots: int, t_in: int, replicate_pad: bool = False) -> None:
        if t_in % weights.stride:
            raise ValueError(f"a step of {t_in} frames is not a whole number of strides ({weights.stride})")
        self.weights, self.t_in, self.t_out = weights, t_in, t_in // weights.stride
        history, c_in = weights.history, weights.in_channels
        self.pointwise = weights.kernel_size == 1 and weights.stride == 1
        self.columns = torch.zeros(pad_rows(max_slots * self.t_out), c_in * weights.kernel_size,
                                   dtype=weights.matrix.dtype)
        if self.pointwise:  # the window is already one row per output frame
            self.window = self.columns[: max_slots * t_in].view(max_slots, t_in, c_in)
        else:
            self.window = torch.zeros(max_slots, history + t_in, c_in, dtype=weights.matrix.dtype)
        self.out = torch.zeros(self.columns.shape[0], weights.out_channels, dtype=weights.matrix.dtype)
        # Per-slot state.
        self.previous = torch.zeros(max_slots, history, c_in, dtype=weights.matrix.dtype)
        self.fresh = torch.ones(max_slots, dtype=torch.bool) if replicate_pad else None

    def state_tensors(self) -> list[torch.Tensor]:
        kept = [self.previous] if self.weights.history else []
        return kept + ([self.fresh] if self.fresh is not None else [])

    def reset(self, slot: int) -> None:
        self.previous[slot].zero_()
        if self.fresh is not None:
            self.fresh[slot] = True

    def input(self, batch: int) -> torch.Tensor:
        """Where this step's input goes: [batch, t_in, C_in]."""
        return self.window[:batch, self.weights.history:]

    def step(self, batch: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """Convolve the input written to `input(batch)`; returns [batch, t_out, C_out].
        Slots not `active` ([batch] bool) keep their state (and get outputs to ignore)."""
        w, history = self.weights, self.weights.history
        window, previous = self.window[:batch], self.previous[:batch]
        if history:
            if self.fresh is not None:  # replicate padding: a fresh stream repeats its first frame
                if active is not None:
                    raise NotImplementedError("replicate padding streams every slot at every step")
                first = window[:, history:history + 1]
                torch.where(self.fresh[:batch].view(batch, 1, 1), first, previous, out=previous)
                self.fresh[:batch].zero_()
            window[:, :history].copy_(previous)
            keep_state(previous, window[:, self.t_in:], active)
        if not self.pointwise:
            span = (w.kernel_size - 1) * w.dilation + 1
            frames = window.unfold(1, span, w.stride)[..., :: w.dilation]  # [batch, t_out, C_in, K]
            self.columns[: batch * self.t_out].view(frames.shape).copy_(frames)
        rows = pad_rows(batch * self.t_out)
        linear(self.columns[:rows], w.matrix, self.out[:rows], w.bias)
        return self.out[: batch * self.t_out].view(batch, self.t_out, w.out_channels)


def overlap_add(blocks: torch.Tensor, partial: torch.Tensor, out: torch.Tensor,
                active: torch.Tensor | None) -> None:
    """blocks [b, t, 2, S, C] -> out [b, t, S, C]: block 0 of frame i plus block 1 of frame i-1
    (the kept `partial` [b, S, C] for i = 0); block 1 of the last frame becomes the new partial."""
    torch.add(blocks[:, 0, 0], partial, out=out[:, 0])
    if blocks.shape[1] > 1:
        torch.add(blocks[:, 1:, 0], blocks[:, :-1, 1], out=out[:, 1:])
    keep_state(partial, blocks[:, -1, 1], active)


class CausalConvTr1d:
    """One transposed convolution's stream: `t_in` frames in, `t_in * stride` frames out a step."""

    def __init__(self, weights: ConvTrWeights, max_slots: int, t_in: int) -> None:
        self.weights, self.t_in, self.t_out = weights, t_in, t_in * weights.stride
        dtype, c_out, stride = weights.matrix.dtype, weights.out_channels, weights.stride
        rows = pad_rows(max_slots * t_in)
        self.rows = torch.zeros(rows, weights.matrix.shape[1], dtype=dtype)
        self.blocks = torch.zeros(rows, weights.matrix.shape[0], dtype=dtype)
        self.out = torch.zeros(max_slots, t_in * stride, c_out, dtype=dtype)
        self.partial = torch.zeros(max_slots, stride, c_out, dtype=dtype)  # per-slot state

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.partial]

    def reset(self, slot: int) -> None:
        self.partial[slot].zero_()

    def input(self, batch: int) -> torch.Tensor:
        return self.rows[: batch * self.t_in].view(batch, self.t_in, -1)

    def step(self, batch: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """Transpose-convolve the input written to `input(batch)`; returns [batch, t_out, C_out]."""
        w, rows = self.weights, pad_rows(batch * self.t_in)
        linear(self.rows[:rows], w.matrix, self.blocks[:rows])
        blocks = self.blocks[: batch * self.t_in].view(batch, self.t_in, 2, w.stride, w.out_channels)
        out = self.out[:batch]
        overlap_add(blocks, self.partial[:batch], out.view(batch, self.t_in, w.stride, w.out_channels), active)
        if w.bias is not None:
            out.add_(w.bias)
        return out


class DepthwiseConvTr1d:
    """The upsampling stream: each channel's frame times its own 2 * stride taps, overlap-added."""

    def __init__(self, weights: DepthwiseConvTrWeights, max_slots: int, t_in: int) -> None:
        self.weights, self.t_in = weights, t_in
        stride, channels = weights.stride, weights.taps.shape[1]
        dtype = weights.taps.dtype
        self.blocks = torch.zeros(max_slots, t_in, 2, stride, channels, dtype=dtype)
        self.out = torch.zeros(max_slots, t_in * stride, channels, dtype=dtype)
        self.partial = torch.zeros(max_slots, stride, channels, dtype=dtype)  # per-slot state

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.partial]

    def reset(self, slot: int) -> None:
        self.partial[slot].zero_()

    def step(self, x: torch.Tensor, batch: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, t_in, C] -> [batch, t_in * stride, C]."""
        stride, channels = self.weights.stride, self.weights.taps.shape[1]
        blocks = self.blocks[:batch]
        taps = self.weights.taps.view(2, stride, channels)
        torch.mul(x.view(batch, self.t_in, 1, 1, channels), taps, out=blocks)
        out = self.out[:batch]
        overlap_add(blocks, self.partial[:batch], out.view(batch, self.t_in, stride, channels), active)
        return out
