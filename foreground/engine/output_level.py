"""The model's voice at a normal playback level: a slow per-session gain toward -20 dBFS RMS
with a hard -1 dBFS peak ceiling, applied to the vocoder's PCM.

Why here: the vocoder reproduces the level its log-mel describes (its contract, tested), and
what the seeded and trained models emit comes out near -53 dBFS RMS: inaudible next to any other
audio. A fixed make-up gain would fit one set of weights; this fits any checkpoint.

- Level: the mean square of the session's speaking ticks, smoothed with a time constant of
  `LEVEL_TAU_S` (its first speaking tick sets it), so the gain follows the voice, not each
  syllable, and the voice keeps its dynamics. Ticks more than `GATE_DB` below the level (pauses)
  leave it alone, or every pause would raise the gain.
- Gain: target / sqrt(level) within [MIN_GAIN_DB, MAX_GAIN_DB], ramped linearly across the tick
  from where the last tick ended: a change makes no step.
- Ceiling: both ends of the ramp are at most ceiling / (this tick's peak), so no sample exceeds
  it. The whole tick is known before it plays: a one-tick lookahead limiter, no clipping. Only a
  tick more than ~19 dB above the voice's level needs it; then the gain steps down at the tick's
  start (where the vocoder's amplitude still has the last tick's value).

Every op is per row (a session's samples do not depend on the batch) into buffers allocated
here (nothing is allocated per tick).
"""

from __future__ import annotations

import math

import torch

TARGET_DBFS = -20.0
CEILING_DBFS = -1.0
LEVEL_TAU_S = 1.0
MAX_GAIN_DB = 60.0
MIN_GAIN_DB = -20.0
GATE_DB = -30.0


class OutputLevel:
    """Per slot: `apply(pcm [B, samples], speaking [B, 1])` scales `pcm` in place."""

    def __init__(self, samples: int, tick_ms: int, max_slots: int) -> None:
        self.target = 10 ** (TARGET_DBFS / 20)
        self.ceiling = 10 ** (CEILING_DBFS / 20)
        self.alpha = 1.0 - math.exp(-tick_ms / 1000 / LEVEL_TAU_S)
        self.level_floor = (self.target / 10 ** (MAX_GAIN_DB / 20)) ** 2  # caps the gain
        self.min_gain = 10 ** (MIN_GAIN_DB / 20)
        self.gate = 10 ** (GATE_DB / 10)
        self.ramp = (torch.arange(1, samples + 1, dtype=torch.float32) / samples)[None, :]
        # State: smoothed mean square of speaking ticks, and the gain the last tick ended at
        # (0 for both: the session has not spoken yet).
        self.level = torch.zeros(max_slots, 1)
        self.gain = torch.zeros(max_slots, 1)
        self._rows = torch.zeros(max_slots, samples)
        self._ms, self._peak, self._next = (torch.zeros(max_slots, 1) for _ in range(3))
        self._start, self._end = torch.zeros(max_slots, 1), torch.zeros(max_slots, 1)
        self._flag, self._moves = (torch.zeros(max_slots, 1, dtype=torch.bool) for _ in range(2))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.level, self.gain]

    def reset(self, slot: int) -> None:
        self.level[slot].zero_()
        self.gain[slot].zero_()

    def apply(self, pcm: torch.Tensor, speaking: torch.Tensor) -> None:
        b = pcm.shape[0]
        rows, ms, peak, nxt = self._rows[:b], self._ms[:b], self._peak[:b], self._next[:b]
        start, end, flag, moves = self._start[:b], self._end[:b], self._flag[:b], self._moves[:b]
        level, gain = self.level[:b], self.gain[:b]
        torch.mul(pcm, pcm, out=rows)
        torch.mean(rows, dim=1, keepdim=True, out=ms)
        torch.abs(pcm, out=rows)
        torch.amax(rows, dim=1, keepdim=True, out=peak)
        # level: speaking ticks above the gate move it (the first one sets it), others leave it
        torch.mul(level, self.gate, out=start)
        torch.gt(ms, start, out=moves)
        moves.logical_and_(speaking)
        torch.lerp(level, ms, self.alpha, out=nxt)
        torch.eq(level, 0.0, out=flag)
        torch.where(flag, ms, nxt, out=nxt)
        torch.where(moves, nxt, level, out=level)
        # the gain this tick ends at: the AGC's, under the ceiling
        torch.clamp(level, min=self.level_floor, out=end)
        end.rsqrt_().mul_(self.target).clamp_(min=self.min_gain)
        peak.clamp_(min=1e-12).reciprocal_().mul_(self.ceiling)
        torch.minimum(end, peak, out=end)
        # ... and starts at: where the last one ended (under the ceiling), or at `end` at first
        torch.minimum(gain, peak, out=start)
        torch.gt(gain, 0.0, out=flag)
        torch.where(flag, start, end, out=start)
        torch.sub(end, start, out=nxt)
        torch.mul(nxt, self.ramp, out=rows)
        rows.add_(start)
        pcm.mul_(rows)
        torch.gt(level, 0.0, out=flag)
        torch.mul(end, flag, out=gain)
