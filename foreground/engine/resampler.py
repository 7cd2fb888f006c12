"""Streaming polyphase resampling between 16 and 24 kHz, for many slots at once.

Clients send 16 or 24 kHz; the reference model reads 16 kHz, the Moshi family 24 kHz, and the
Silero VAD 16 kHz, so the engine converts either way. Output sample m sits at input position
m * rate_in / rate_out, delayed by `half_width` input samples, so chunks join seamlessly: each
slot keeps the last `2 * half_width` input samples. The Kaiser-windowed-sinc filter runs as one
matmul (`linear`, batch-invariant): each frame of `group_in * groups + 2 * half_width - 1`
input samples (stride `group_in * groups`) times a banded [frame, group_out * groups] matrix.
"""

from __future__ import annotations

import math

import torch

from foreground.kernels.matmul import linear, pad_rows


class PolyphaseResampler:
    def __init__(self, rate_in: int, rate_out: int, max_slots: int, chunk_in: int, half_width: int = 48,
                 cutoff_hz: float = 7_300.0, kaiser_beta: float = 8.0, groups: int = 32) -> None:
        common = math.gcd(rate_in, rate_out)
        self.group_in, self.group_out = rate_in // common, rate_out // common  # 3:2 or 2:3
        self.rate_in = rate_in
        step = self.group_in * groups
        if chunk_in % step:
            raise ValueError(f"chunk_in {chunk_in} must be a multiple of {step} samples")
        self.max_slots, self.chunk_in, self.half_width = max_slots, chunk_in, half_width
        self.chunk_out = chunk_in * self.group_out // self.group_in
        self.tail_len = 2 * half_width
        self.frame_len = step + 2 * half_width - 1
        self.frame_step = step
        self.n_frames = chunk_in // step
        self.taps = self._tap_matrix(self.group_out * groups, cutoff_hz, kaiser_beta)  # [frame_len, out/frame]
        self.tail = torch.zeros(max_slots, self.tail_len)
        self._signal = torch.zeros(max_slots, self.tail_len + chunk_in)
        self._frames = torch.zeros(pad_rows(max_slots * self.n_frames), self.frame_len)
        self._out = torch.zeros(pad_rows(max_slots * self.n_frames), self.group_out * groups)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.tail]

    def reset(self, slot: int) -> None:
        self.tail[slot].zero_()

    def resample(self, pcm: torch.Tensor, out: torch.Tensor) -> None:
        """pcm [B, chunk_in] float32 for slots 0..B-1 -> out [B, chunk_out]."""
        batch = pcm.shape[0]
        if batch > self.max_slots or pcm.shape[1] != self.chunk_in:
            raise ValueError(f"expected [B <= {self.max_slots}, {self.chunk_in}], got {list(pcm.shape)}")
        signal = self._signal[:batch]
        signal[:, :self.tail_len].copy_(self.tail[:batch])
        signal[:, self.tail_len:].copy_(pcm)
        self.tail[:batch].copy_(signal[:, self.chunk_in:])
        frames = signal.unfold(1, self.frame_len, self.frame_step)  # [B, n_frames, frame_len]
        rows = batch * self.n_frames
        self._frames[:rows].view(frames.shape).copy_(frames)
        filtered = linear(self._frames[:pad_rows(rows)], self.taps.t(), self._out[:pad_rows(rows)])
        out.copy_(filtered[:rows].view(out.shape))

    def _tap_matrix(self, outputs: int, cutoff_hz: float, beta: float) -> torch.Tensor:
        """taps[l, k] = h(k * rate_in / rate_out + half_width - l): output k of a frame from input l."""
        h = self.half_width
        position = torch.arange(self.frame_len, dtype=torch.float64)[:, None]
        centre = self.group_in / self.group_out * torch.arange(outputs, dtype=torch.float64)[None, :] + h
        offset = centre - position  # in input samples
        band = 2.0 * cutoff_hz / self.rate_in
        ratio = (offset / h).clamp(-1.0, 1.0)
        window = torch.special.i0(beta * torch.sqrt(1.0 - ratio**2)) / torch.special.i0(
            torch.tensor(beta, dtype=torch.float64))
        taps = band * torch.sinc(band * offset) * window * (offset.abs() <= h)
        taps /= taps.sum(dim=0, keepdim=True)  # exact unit gain at DC for every phase
        return taps.to(torch.float32).contiguous()


class Resampler24kTo16k(PolyphaseResampler):
    """24 kHz client audio for 16 kHz readers (the reference model's features, the VAD)."""

    RATE_IN, RATE_OUT = 24_000, 16_000

    def __init__(self, max_slots: int, chunk_in: int = 4800, **kwargs) -> None:
        super().__init__(24_000, 16_000, max_slots, chunk_in, **kwargs)


class Resampler16kTo24k(PolyphaseResampler):
    """16 kHz client audio for a 24 kHz model (the Moshi family's Mimi)."""

    def __init__(self, max_slots: int, chunk_in: int = 3200, **kwargs) -> None:
        super().__init__(16_000, 24_000, max_slots, chunk_in, **kwargs)
