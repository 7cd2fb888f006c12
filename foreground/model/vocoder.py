"""Log-mel frames to 24 kHz PCM with a sinusoidal channel vocoder: one matmul per tick.

Griffin-Lim is too slow for 64 sessions on 2 cores. Here each mel channel drives one carrier
sinusoid at the channel's centre frequency rounded to a multiple of 1000 / tick_ms (5 Hz), so a
tick (4800 samples) holds whole carrier periods: the carrier table is the same every tick and
phase-continuous for free. Carrier phases follow Schroeder's rule (low crest factor).

Envelope. A channel's amplitude is `gain * sqrt(exp(log_mel) - exp(log_mel_floor))` (0 at or
below the floor, so the floor is silence), with `gain = sqrt(32 / (3 n_fft_in**2))`: a sine of
amplitude A at a channel centre has mel power A^2 * 3 n_fft_in^2 / 32 in the featuriser
(Hann window, unnormalised |rfft|^2), and for broadband input the channel powers sum to the
one-sided spectrum, so the vocoder of the featuriser's log-mel comes back at about the input RMS.
Amplitudes are linearly interpolated sample by sample: knot 0 at sample 0 holds the previous
tick's last frame (per-slot state), frame i sits at its centre hop_out * (i + 0.5), and the last
frame is held to the tick's end, where the next tick's knot 0 takes over with the same value.

The channels are those of the featuriser (0 .. input_rate / 2): the model's output frames live
in the same feature space as the user's input frames, so `DMelFeaturizer.quantize` applies.

Hot path: `synthesize` and `to_pcm16` allocate nothing after their first call; the matmul is
`foreground.kernels.matmul.linear` over `pad_rows(B)` rows, for batch invariance.
"""

from __future__ import annotations

import logging
import math

import torch

from foreground.kernels.matmul import linear, pad_rows
from foreground.model.audio_features import mel_centre_frequencies
from foreground.model.config import AudioConfig

log = logging.getLogger(__name__)


def carrier_frequencies(cfg: AudioConfig) -> torch.Tensor:
    """Channel centres (Hz) rounded to whole periods per tick, as int64 [n_mels]."""
    step = 1000 // cfg.tick_ms
    centres = mel_centre_frequencies(cfg.n_mels, 0.0, cfg.input_rate / 2)
    rounded = [max(step, step * round(f / step)) for f in centres]
    if len(set(rounded)) < len(rounded):
        log.warning("vocoder: two mel channels share a carrier after rounding to %d Hz", step)
    return torch.tensor(rounded, dtype=torch.int64)


def interpolation_weights(cfg: AudioConfig) -> torch.Tensor:
    """[frames + 1, samples]: row 0 = previous tick's last frame, row 1 + i = frame i."""
    samples, hop = cfg.output_samples_per_tick, cfg.hop_out
    knots = [0.0] + [hop * (i + 0.5) for i in range(cfg.frames_per_tick)]
    n = torch.arange(samples, dtype=torch.float64)
    weights = torch.zeros(len(knots), samples, dtype=torch.float64)
    for j in range(len(knots) - 1):
        left, right = knots[j], knots[j + 1]
        inside = (n >= left) & (n < right)
        rising = ((n - left) / (right - left))[inside]
        weights[j, inside] = 1.0 - rising
        weights[j + 1, inside] = rising
    weights[-1, n >= knots[-1]] = 1.0  # hold the last frame to the tick's end
    return weights


def carrier_table(cfg: AudioConfig) -> torch.Tensor:
    """[n_mels, samples] cosines, exact phase from integer arithmetic (f * n mod rate)."""
    freqs = carrier_frequencies(cfg)
    n = torch.arange(cfg.output_samples_per_tick, dtype=torch.int64)
    cycles = (freqs[:, None] * n[None, :]) % cfg.output_rate
    channel = torch.arange(cfg.n_mels, dtype=torch.float64)
    schroeder = math.pi * channel**2 / cfg.n_mels
    return torch.cos(2 * math.pi * cycles.double() / cfg.output_rate + schroeder[:, None])


class ChannelVocoder:
    """Per tick and slot: `frames_per_tick` log-mel frames -> `output_samples_per_tick` PCM."""

    def __init__(self, cfg: AudioConfig, max_slots: int) -> None:
        self.cfg, self.max_slots = cfg, max_slots
        knots, n_mels = cfg.frames_per_tick + 1, cfg.n_mels
        self.samples = cfg.output_samples_per_tick
        self.gain = math.sqrt(32.0 / (3.0 * cfg.n_fft_in**2))
        self.floor_power = math.exp(cfg.log_mel_floor)
        weights, carriers = interpolation_weights(cfg), carrier_table(cfg)
        basis = weights[:, None, :] * carriers[None, :, :]  # [(knot, channel), n]
        self.basis = basis.reshape(knots * n_mels, self.samples).to(torch.float32).contiguous()
        # State: each slot's last-frame amplitudes (0 = silence).
        self.last_amplitude = torch.zeros(max_slots, n_mels)
        # Scratch: the matmul's operands, pad_rows(max_slots) rows.
        self._amplitude = torch.zeros(pad_rows(max_slots), knots, n_mels)
        self._pcm = torch.zeros(pad_rows(max_slots), self.samples)
        self._pcm16_scratch = torch.zeros(max_slots, self.samples)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.last_amplitude]

    def reset(self, slot: int) -> None:
        """A new session joins `slot`: its voice fades in from silence."""
        self.last_amplitude[slot].zero_()

    def synthesize(self, log_mel: torch.Tensor, out_pcm: torch.Tensor) -> None:
        """log_mel [B, 5, n_mels] for slots 0..B-1 -> out_pcm [B, 4800] float32 in [-1, 1]."""
        batch = log_mel.shape[0]
        expected = (self.cfg.frames_per_tick, self.cfg.n_mels)
        if batch > self.max_slots or tuple(log_mel.shape[1:]) != expected:
            raise ValueError(f"expected log_mel [B <= {self.max_slots}, {expected[0]}, "
                             f"{expected[1]}], got {list(log_mel.shape)}")
        amplitude = self._amplitude[:batch]
        amplitude[:, 0].copy_(self.last_amplitude[:batch])
        self._frame_amplitudes(log_mel, amplitude[:, 1:])
        self.last_amplitude[:batch].copy_(amplitude[:, -1])
        rows = pad_rows(batch)
        pcm = linear(self._amplitude[:rows].view(rows, -1), self.basis.t(), self._pcm[:rows])
        torch.clamp(pcm[:batch], -1.0, 1.0, out=out_pcm)

    def to_pcm16(self, pcm: torch.Tensor, out: torch.Tensor) -> None:
        """pcm [B, 4800] float in [-1, 1] -> out [B, 4800] int16 (rounded, saturated)."""
        if pcm.shape[0] > self.max_slots or pcm.shape[1] != self.samples:
            raise ValueError(f"expected pcm [B <= {self.max_slots}, {self.samples}], "
                             f"got {list(pcm.shape)}")
        scratch = self._pcm16_scratch[:pcm.shape[0]]
        torch.mul(pcm, 32767.0, out=scratch)
        scratch.round_().clamp_(-32768.0, 32767.0)
        out.copy_(scratch)

    def _frame_amplitudes(self, log_mel: torch.Tensor, out: torch.Tensor) -> None:
        cfg = self.cfg
        torch.clamp(log_mel, cfg.log_mel_floor, cfg.log_mel_ceil, out=out)
        out.nan_to_num_(nan=cfg.log_mel_floor).exp_().sub_(self.floor_power)
        out.clamp_(min=0.0).sqrt_().mul_(self.gain)
