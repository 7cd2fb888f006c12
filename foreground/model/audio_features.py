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

from foreground.engine.resampler import Resampler24kTo16k  # noqa: F401 (its home before the engine shared it)
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
