"""The user's audio stream into dMel features, one 200 ms tick at a time, for many slots at once.

dMel (Bai et al., 2024): log-mel energies, each channel quantised into a few uniform bins, with
no learned encoder. A 24 kHz client stream first goes through `Resampler24kTo16k`.

Hot path: `featurize`, `quantize` and `resample` allocate no tensors after their first call
(every buffer is sized for `max_slots` in `__init__`). Batch invariance: the matmuls go through
`foreground.kernels.matmul.linear` over `pad_rows` rows; `rfft` and element-wise ops are
row-independent already.
"""

from __future__ import annotations

import logging
import math

import torch

from foreground.kernels.matmul import linear, pad_rows
from foreground.model.config import AudioConfig

log = logging.getLogger(__name__)

LOG_CLAMP = 1e-10  # mel energy floor before the log: digital silence gives log(1e-10) ~ -23


def hz_to_mel(hz: float) -> float:
    """HTK mel scale."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_band_edges(n_mels: int, f_min: float, f_max: float) -> list[float]:
    """`n_mels + 2` frequencies (Hz) equally spaced in mel: channel c spans edges c..c+2."""
    lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
    return [mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]


def mel_centre_frequencies(n_mels: int, f_min: float, f_max: float) -> list[float]:
    """The peak frequency (Hz) of each triangular channel of `mel_filterbank`."""
    return mel_band_edges(n_mels, f_min, f_max)[1:-1]


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, peak 1 (no area normalisation): [n_fft // 2 + 1, n_mels]."""
    f_max = sample_rate / 2 if f_max is None else f_max
    edges = torch.tensor(mel_band_edges(n_mels, f_min, f_max), dtype=torch.float64)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.minimum(rising, falling).clamp_(min=0.0).to(torch.float32)


class DMelFeaturizer:
    """16 kHz PCM ticks -> `frames_per_tick` log-mel frames and their dMel bins, per slot.

    Frames are `n_fft_in` long at hop `hop_in` (Hann, periodic). Each slot keeps the last
    `n_fft_in - hop_in` samples as state, so a tick's frames continue the previous tick's at
    the same hop: the frame grid is the same as if the whole stream were framed at once.
    """

    def __init__(self, cfg: AudioConfig, max_slots: int) -> None:
        self.cfg, self.max_slots = cfg, max_slots
        n_fft, hop, frames = cfg.n_fft_in, cfg.hop_in, cfg.frames_per_tick
        self.tail_len = n_fft - hop
        self.chunk_len = cfg.input_samples_per_tick
        n_freq = n_fft // 2 + 1
        self.window = torch.hann_window(n_fft, periodic=True)
        self.filterbank = mel_filterbank(n_fft, cfg.input_rate, cfg.n_mels).contiguous()
        # State.
        self.tail = torch.zeros(max_slots, self.tail_len)
        # Scratch, all sized for max_slots (the matmul's operands for pad_rows of its rows).
        self._signal = torch.zeros(max_slots, self.tail_len + self.chunk_len)
        self._windowed = torch.zeros(max_slots, frames, n_fft)
        self._spectrum = torch.zeros(max_slots, frames, n_freq, dtype=torch.complex64)
        self._power = torch.zeros(pad_rows(max_slots * frames), n_freq)  # rows (slot, frame)
        self._mel = torch.zeros(pad_rows(max_slots * frames), cfg.n_mels)
        self._bins_scratch = torch.zeros(max_slots, frames, cfg.n_mels)
        self._bin_scale = cfg.dmel_bins / (cfg.log_mel_ceil - cfg.log_mel_floor)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.tail]

    def reset(self, slot: int) -> None:
        """A new session joins `slot`: its stream starts from silence."""
        self.tail[slot].zero_()

    def featurize(self, pcm: torch.Tensor, out_log_mel: torch.Tensor,
                  out_bins: torch.Tensor) -> None:
        """pcm [B, 3200] float32 for slots 0..B-1 -> out_log_mel [B, 5, n_mels], out_bins (long)."""
        batch = pcm.shape[0]
        self._check_batch(batch, pcm.shape[1:], (self.chunk_len,))
        signal = self._signal[:batch]
        signal[:, :self.tail_len].copy_(self.tail[:batch])
        signal[:, self.tail_len:].copy_(pcm)
        self.tail[:batch].copy_(signal[:, self.chunk_len:])
        frames = signal.unfold(1, self.cfg.n_fft_in, self.cfg.hop_in)  # [B, 5, n_fft], a view
        windowed = self._windowed[:batch]
        torch.mul(frames, self.window, out=windowed)
        self._power_spectrum(batch)
        rows = batch * self.cfg.frames_per_tick
        mel = linear(self._power[:pad_rows(rows)], self.filterbank.t(), self._mel[:pad_rows(rows)])
        torch.clamp(mel[:rows].view(out_log_mel.shape), min=LOG_CLAMP, out=out_log_mel)
        out_log_mel.log_()
        self.quantize(out_log_mel, out_bins)

    def power_rows(self) -> torch.Tensor:
        """The last `featurize` call's power spectra, rows (slot, frame), [pad_rows(...), n_fft/2+1]
        (rows past the batch are stale): what pitch features read (`PitchSalience`)."""
        return self._power

    def quantize(self, log_mel: torch.Tensor, out_bins: torch.Tensor) -> None:
        """log_mel [B, 5, n_mels] -> out_bins: uniform bins over [log_mel_floor, log_mel_ceil]."""
        scratch = self._bins_scratch[:log_mel.shape[0]]
        self._check_batch(log_mel.shape[0], log_mel.shape[1:], scratch.shape[1:])
        torch.sub(log_mel, self.cfg.log_mel_floor, out=scratch)
        scratch.mul_(self._bin_scale).nan_to_num_(nan=0.0).floor_()
        scratch.clamp_(0, self.cfg.dmel_bins - 1)
        out_bins.copy_(scratch)

    def _power_spectrum(self, batch: int) -> None:
        spectrum = self._spectrum[:batch]
        torch.fft.rfft(self._windowed[:batch], dim=-1, out=spectrum)
        parts = torch.view_as_real(spectrum)
        power = self._power[:batch * self.cfg.frames_per_tick].view(spectrum.shape)
        torch.mul(parts[..., 0], parts[..., 0], out=power)
        power.addcmul_(parts[..., 1], parts[..., 1])

    def _check_batch(self, batch: int, shape: torch.Size, expected: tuple[int, ...]) -> None:
        if batch > self.max_slots or tuple(shape) != tuple(expected):
            raise ValueError(f"expected [B <= {self.max_slots}, {', '.join(map(str, expected))}], "
                             f"got [{batch}, {', '.join(map(str, shape))}]")


class Resampler24kTo16k:
    """Streaming 3:2 polyphase resampler with a Kaiser-windowed-sinc anti-aliasing filter.

    Output sample m sits at input position 1.5 m, delayed by `half_width` input samples (2 ms),
    so chunks join seamlessly: each slot keeps the last `2 * half_width` input samples.
    The filter runs as one matmul (`linear`): each frame of `3 * pairs + 2 * half_width - 1`
    input samples (stride `3 * pairs`) times a banded [frame, 2 * pairs] matrix of filter taps.
    """

    RATE_IN, RATE_OUT = 24_000, 16_000

    def __init__(self, max_slots: int, chunk_in: int = 4800, half_width: int = 48,
                 cutoff_hz: float = 7_300.0, kaiser_beta: float = 8.0, pairs: int = 32) -> None:
        if chunk_in % (3 * pairs):
            raise ValueError(f"chunk_in {chunk_in} must be a multiple of 3 * pairs = {3 * pairs}")
        self.max_slots, self.chunk_in, self.half_width = max_slots, chunk_in, half_width
        self.chunk_out = chunk_in * 2 // 3
        self.tail_len = 2 * half_width
        self.frame_len = 3 * pairs + 2 * half_width - 1
        self.frame_step = 3 * pairs
        self.n_frames = chunk_in // self.frame_step
        self.taps = self._tap_matrix(pairs, cutoff_hz, kaiser_beta)  # [frame_len, 2 * pairs]
        self.tail = torch.zeros(max_slots, self.tail_len)
        self._signal = torch.zeros(max_slots, self.tail_len + chunk_in)
        self._frames = torch.zeros(pad_rows(max_slots * self.n_frames), self.frame_len)
        self._out = torch.zeros(pad_rows(max_slots * self.n_frames), 2 * pairs)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.tail]

    def reset(self, slot: int) -> None:
        self.tail[slot].zero_()

    def resample(self, pcm24: torch.Tensor, out: torch.Tensor) -> None:
        """pcm24 [B, 4800] float32 for slots 0..B-1 -> out [B, 3200] at 16 kHz."""
        batch = pcm24.shape[0]
        if batch > self.max_slots or pcm24.shape[1] != self.chunk_in:
            raise ValueError(f"expected [B <= {self.max_slots}, {self.chunk_in}], "
                             f"got {list(pcm24.shape)}")
        signal = self._signal[:batch]
        signal[:, :self.tail_len].copy_(self.tail[:batch])
        signal[:, self.tail_len:].copy_(pcm24)
        self.tail[:batch].copy_(signal[:, self.chunk_in:])
        frames = signal.unfold(1, self.frame_len, self.frame_step)  # [B, n_frames, frame_len]
        rows = batch * self.n_frames
        self._frames[:rows].view(frames.shape).copy_(frames)
        filtered = linear(self._frames[:pad_rows(rows)], self.taps.t(), self._out[:pad_rows(rows)])
        out.copy_(filtered[:rows].view(out.shape))

    def _tap_matrix(self, pairs: int, cutoff_hz: float, beta: float) -> torch.Tensor:
        """taps[l, k] = h(1.5 k + half_width - l): output k of a frame from its input l."""
        h = self.half_width
        position = torch.arange(self.frame_len, dtype=torch.float64)[:, None]
        centre = 1.5 * torch.arange(2 * pairs, dtype=torch.float64)[None, :] + h
        offset = centre - position  # in input samples
        band = 2.0 * cutoff_hz / self.RATE_IN
        ratio = (offset / h).clamp(-1.0, 1.0)
        window = torch.special.i0(beta * torch.sqrt(1.0 - ratio**2)) / torch.special.i0(
            torch.tensor(beta, dtype=torch.float64))
        taps = band * torch.sinc(band * offset) * window * (offset.abs() <= h)
        taps /= taps.sum(dim=0, keepdim=True)  # exact unit gain at DC for both phases
        return taps.to(torch.float32).contiguous()
