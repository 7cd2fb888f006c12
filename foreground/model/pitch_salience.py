"""A pitch-salience map per audio frame: how well each candidate F0's harmonics fit the spectrum.

Why: the cue that tells a turn end from a mid-turn pause is mostly intonation (FACTS.md:
pitch/energy-slope features separate them; espeak-ng falls in pitch at a sentence end and
stays level before a break), and 40 log-mel channels do not resolve pitch: a harmonic-template
match on them put only ~45% of male-voice frames within 6% of the true F0, the same match on the
featuriser's 513-bin power spectrum ~93%. So the map is computed from `DMelFeaturizer`'s own
power spectrum (no second FFT): per frame, the log power below `pitch_max_hz`, mean removed,
times a fixed [bins, candidates] matrix of harmonic weights, then a softmax over the candidates.
A falling pitch is a ridge moving down the map, which the detector's temporal convolutions
read as a linear pattern.

Hot path: one `linear` over whole row tiles, row-wise element-wise ops and reductions over the
last dimension (the same for a row whatever the batch): allocation-free, batch-invariant.
"""

from __future__ import annotations

import math

import torch

from foreground.kernels.matmul import linear, pad_rows
from foreground.kernels.softmax import softmax_
from foreground.model.config import AudioConfig, TurnDetectorConfig

POWER_FLOOR = 1e-4


def harmonic_matrix(audio: AudioConfig, cfg: TurnDetectorConfig) -> torch.Tensor:
    """[bins, candidates]: harmonic h of candidate f adds 1/h^0.3 to its two nearest FFT bins
    (linear interpolation); each column sums to 1, so candidates with fewer harmonics below
    `pitch_max_hz` are not at a disadvantage."""
    bins = pitch_bins(audio, cfg)
    hz_per_bin = audio.input_rate / audio.n_fft_in
    matrix = torch.zeros(bins, cfg.pitch_candidates, dtype=torch.float64)
    for i in range(cfg.pitch_candidates):
        f0 = cfg.pitch_min_hz * 2 ** (i / cfg.pitch_steps_per_octave)
        for h in range(1, cfg.pitch_harmonics + 1):
            position = h * f0 / hz_per_bin
            low = math.floor(position)
            if h * f0 > cfg.pitch_max_hz or low + 1 >= bins:
                break
            frac = position - low
            matrix[low, i] += (1 - frac) / h**0.3
            matrix[low + 1, i] += frac / h**0.3
        matrix[:, i] /= matrix[:, i].sum()
    return matrix.to(torch.float32).contiguous()


def pitch_bins(audio: AudioConfig, cfg: TurnDetectorConfig) -> int:
    return math.ceil(cfg.pitch_max_hz * audio.n_fft_in / audio.input_rate) + 2


class PitchSalience:
    """Power-spectrum rows -> [rows, pitch_candidates] salience maps (softmax * pitch_scale)."""

    def __init__(self, audio: AudioConfig, cfg: TurnDetectorConfig, max_rows: int) -> None:
        self.cfg = cfg
        self.bins = pitch_bins(audio, cfg)
        self.matrix_t = harmonic_matrix(audio, cfg).t().contiguous()  # linear's [N, K] weight
        rows = pad_rows(max_rows)
        self._log_power = torch.zeros(rows, self.bins)
        self._mean = torch.zeros(rows, 1)
        self._salience = torch.zeros(rows, cfg.pitch_candidates)

    def compute(self, power_rows: torch.Tensor, rows: int, out: torch.Tensor) -> torch.Tensor:
        """power_rows [>= pad_rows(rows), n_freq] -> out [rows, candidates] (any shape viewing as such)."""
        padded = pad_rows(rows)
        log_power = self._log_power[:padded]
        torch.clamp(power_rows[:padded, : self.bins], min=POWER_FLOOR, out=log_power)
        log_power.log_()
        torch.mean(log_power, dim=1, keepdim=True, out=self._mean[:padded])
        log_power.sub_(self._mean[:padded])
        salience = linear(log_power, self.matrix_t, self._salience[:padded])[:rows]
        salience.mul_(self.cfg.pitch_sharpness)
        softmax_(salience)
        salience.mul_(self.cfg.pitch_scale)
        out.view(rows, -1).copy_(salience)
        return out
