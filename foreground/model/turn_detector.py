"""The end-of-turn detector: has the user paused mid-turn, or ended the turn?

A silence timer cannot tell a 0.7 s mid-sentence pause from a turn end within 0.3 s; the cue is
in the last second or two of speech (pitch and energy falling at a sentence end, FACTS.md). The
detector reads what the engine's featuriser computes for each 40 ms frame: the log-mel frame
(`buffers.user_log_mel`: its energy and lowest channels) and a pitch-salience map from the same
power spectrum (`PitchSalience`), keeps the last `window_frames` frames per slot (2 s), and
decides two things at every tick: does the user speak (SPEECH logit > 0), and, when silent, has
the turn ended or is this a pause inside it (END logit > 0)?

Labels have three classes (SPEAKING, PAUSING, ENDED); the outputs are these two binary logits
rather than a 3-way softmax because their thresholds are chosen separately: the end threshold is
set on other voices to hold pause takeovers down and is folded into the END bias. On a 3-way
argmax the same shift moved the speech decision too (with the end threshold folded in, 74% of
silent validation frames came out "speaking"). And the detector has its own speech logit,
not the VAD's, so the `model` turn policy needs no VAD: it takes the floor on END and stops on
SPEECH (barge-in); `hybrid` takes a free floor on END and keeps the VAD guard.

The net: per-frame features [pitch map | energy | low channels], a per-frame projection, two
strided temporal convolutions (as unfold + matmul), a dense layer over the flattened positions
and, when `context_time_constants_s` is set, the session's context (running means of the frame
features over the whole session, one per time constant: what came before the window, such as
the speaker's pitch range and the background's level), the two logits. Every matmul is `foreground.kernels.linear`'s arithmetic over row tiles and the
element-wise ops are the same, so the training forward (`TurnDetector.forward`, differentiable)
and the engine's `TurnDetectorRunner.step` (allocation-free, preallocated buffers) give bitwise
the same logits for the same window (tests/test_turn_training.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from foreground.kernels.matmul import ROW_TILE, linear, pad_rows
from foreground.model.audio_features import LOG_CLAMP
from foreground.model.config import ModelConfig, TurnDetectorConfig

SPEAKING, PAUSING, ENDED = 0, 1, 2  # frame labels
SPEECH, END = 0, 1  # output logits: user speaking (vs silent); turn ended (vs pausing), given silence


def frame_seconds(cfg: ModelConfig) -> float:
    return cfg.audio.tick_ms / 1000 / cfg.audio.frames_per_tick


class RunningContext:
    """Running means of the frame features, one per time constant: per frame,
    `context <- context * decay + frame * (1 - decay)`. The trainer (over whole streams) and the
    engine (per slot, frame by frame) run these same element-wise ops, so they agree bitwise."""

    def __init__(self, cfg: ModelConfig, rows: int) -> None:
        d = cfg.turn_detector
        taus = torch.tensor(d.context_time_constants_s, dtype=torch.float64)
        decay = torch.exp(-frame_seconds(cfg) / taus).float()
        self.decay = decay.view(-1, 1)  # [K, 1]
        self.gain = (1 - decay).view(-1, 1)
        self.scratch = torch.zeros(rows, len(taus), d.frame_features)

    def update(self, context: torch.Tensor, frame: torch.Tensor) -> None:
        """context [N, K, F] (in place) with frame [N, F]; N <= rows."""
        scratch = self.scratch[: context.shape[0]]
        torch.mul(context, self.decay, out=context)
        torch.mul(frame.unsqueeze(1), self.gain, out=scratch)
        torch.add(context, scratch, out=context)

    def sequence(self, features: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """features [S, T, F] -> the context after each frame, [S, T, K * F] (from `start` [F])."""
        s, t, f = features.shape
        context = start.expand(s, self.decay.shape[0], f).clone()
        out = torch.zeros(s, t, context.shape[1] * f)
        for j in range(t):
            self.update(context, features[:, j])
            out[:, j] = context.view(s, -1)
        return out


def frame_features(d: TurnDetectorConfig, log_mel: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """[..., n_mels] raw log-mel and [..., pitch_candidates] salience -> [..., frame_features]."""
    mel = (log_mel.clamp(d.log_mel_min, d.log_mel_max) - d.log_mel_centre) / d.log_mel_scale
    return torch.cat([pitch, mel.amax(dim=-1, keepdim=True), mel[..., : d.low_channels]], dim=-1)


def silence_features(cfg: ModelConfig) -> torch.Tensor:
    """[F]: digital silence and a flat pitch map, what a fresh slot starts from."""
    d = cfg.turn_detector
    silent_mel = torch.full((1, cfg.audio.n_mels), math.log(LOG_CLAMP))
    flat_pitch = torch.full((1, d.pitch_candidates), d.pitch_scale / d.pitch_candidates)
    return frame_features(d, silent_mel, flat_pitch)[0]


def conv_positions(cfg: TurnDetectorConfig) -> tuple[int, int]:
    """Output positions of the two strided convolutions over the window."""
    first = (cfg.window_frames - cfg.conv_kernel) // cfg.conv_stride + 1
    second = (first - cfg.conv_kernel) // cfg.conv_stride + 1
    return first, second


class TurnDetector(nn.Module):
    """Parameters (`interaction.turn_detector.*` in a checkpoint) and the training forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = self.cfg = cfg.turn_detector
        _, second = conv_positions(d)
        self.frame = nn.Linear(d.frame_features, d.frame_dim)
        self.conv1 = nn.Linear(d.frame_dim * d.conv_kernel, d.conv_channels)
        self.conv2 = nn.Linear(d.conv_channels * d.conv_kernel, d.conv_channels)
        self.hidden = nn.Linear(d.conv_channels * second + d.context_features, d.hidden)
        self.out = nn.Linear(d.hidden, d.outputs)

    def forward(self, log_mel: torch.Tensor, pitch: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Windows [N, window_frames, n_mels] of raw log-mel and [N, window_frames, candidates]
        of pitch salience (oldest first), and the context after the window's last frame
        [N, context_features] (`RunningContext`) -> logits [N, outputs] (SPEECH, END)."""
        d, n = self.cfg, log_mel.shape[0]
        first, second = conv_positions(d)
        x = frame_features(d, log_mel, pitch)
        h = torch.relu(_tiled(x.reshape(n * d.window_frames, -1), self.frame))
        u = h.view(n, d.window_frames, -1).unfold(1, d.conv_kernel, d.conv_stride)
        h = torch.relu(_tiled(u.reshape(n * first, -1), self.conv1))
        u = h.view(n, first, -1).unfold(1, d.conv_kernel, d.conv_stride)
        h = torch.relu(_tiled(u.reshape(n * second, -1), self.conv2)).reshape(n, -1)
        if d.context_features:
            h = torch.cat([h, context], dim=1)
        h = torch.relu(_tiled(h, self.hidden))
        return _tiled(h, self.out)


def _tiled(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`kernels.linear`'s arithmetic, differentiable: rows padded to whole tiles, one bmm."""
    rows = x.shape[0]
    padded = pad_rows(rows)
    if padded != rows:
        x = torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])
    tiles = padded // ROW_TILE
    w = layer.weight.t()
    y = torch.bmm(x.view(tiles, ROW_TILE, -1), w.expand(tiles, *w.shape)).view(padded, -1) + layer.bias
    return y[:rows]


class TurnDetectorRunner:
    """The detector in the tick: per-slot state (the window ring), allocation-free after warm-up.

    The ring holds per-frame features, oldest first; a tick shifts it by `frames_per_tick` and
    appends the new frames'. A fresh slot starts from digital silence (ln LOG_CLAMP, a flat
    pitch map)."""

    def __init__(self, detector: TurnDetector, cfg: ModelConfig, max_slots: int) -> None:
        d, f = cfg.turn_detector, cfg.audio.frames_per_tick
        self.detector, self.cfg, self.frames_per_tick = detector, d, f
        first, second = conv_positions(d)
        w, k, features = d.window_frames, d.conv_kernel, d.frame_features
        self.positions = (w, first, second)
        self._ring_rows = torch.zeros(pad_rows(max_slots * w), features)  # matmul input: whole tiles
        self.ring = self._ring_rows[: max_slots * w].view(max_slots, w, features)
        self._shift = torch.zeros(max_slots, w - f, features)
        self._mel = torch.zeros(max_slots, f, cfg.audio.n_mels)
        self._energy = torch.zeros(max_slots, f, 1)
        self._silence = silence_features(cfg)
        self.ring.copy_(self._silence)
        self.running = RunningContext(cfg, max_slots)
        self.context = torch.zeros(max_slots, len(d.context_time_constants_s), features)
        self.context.copy_(self._silence.expand_as(self.context))
        self._h0 = torch.zeros(pad_rows(max_slots * w), d.frame_dim)
        self._u1 = torch.zeros(pad_rows(max_slots * first), d.frame_dim * k)
        self._h1 = torch.zeros(pad_rows(max_slots * first), d.conv_channels)
        self._u2 = torch.zeros(pad_rows(max_slots * second), d.conv_channels * k)
        self._h2 = torch.zeros(pad_rows(max_slots * second), d.conv_channels)
        self._flat = torch.zeros(pad_rows(max_slots), d.conv_channels * second + d.context_features)
        self._conv_width = d.conv_channels * second
        self._h3 = torch.zeros(pad_rows(max_slots), d.hidden)
        self._logits = torch.zeros(pad_rows(max_slots), d.outputs)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.ring, self.context]

    def reset(self, slot: int) -> None:
        self.ring[slot].copy_(self._silence)
        self.context[slot].copy_(self._silence.expand_as(self.context[slot]))

    @torch.inference_mode()
    def step(self, log_mel: torch.Tensor, pitch: torch.Tensor, b: int, out: torch.Tensor) -> None:
        """This tick's log_mel [b, F, n_mels] (raw) and pitch [b, F, candidates] -> out [b, outputs]."""
        self._push(log_mel, pitch, b)
        d, det = self.cfg, self.detector
        w, first, second = self.positions
        k, s = d.conv_kernel, d.conv_stride
        h0 = self._layer(self._ring_rows, b * w, det.frame, self._h0)
        self._u1[: b * first].view(b, first, -1, k).copy_(h0[: b * w].view(b, w, -1).unfold(1, k, s))
        h1 = self._layer(self._u1, b * first, det.conv1, self._h1)
        self._u2[: b * second].view(b, second, -1, k).copy_(h1[: b * first].view(b, first, -1).unfold(1, k, s))
        h2 = self._layer(self._u2, b * second, det.conv2, self._h2)
        self._flat[:b, : self._conv_width].copy_(h2[: b * second].view(b, -1))
        if self.cfg.context_features:
            self._flat[:b, self._conv_width:].copy_(self.context[:b].view(b, -1))
        h3 = self._layer(self._flat, b, det.hidden, self._h3)
        rows = pad_rows(b)
        linear(h3[:rows], det.out.weight, self._logits[:rows], bias=det.out.bias)
        out.copy_(self._logits[:b])

    def _push(self, log_mel: torch.Tensor, pitch: torch.Tensor, b: int) -> None:
        """Shift the ring by one tick and write the new frames' features (`frame_features`)."""
        d, f = self.cfg, self.frames_per_tick
        w, p, ring = d.window_frames, d.pitch_candidates, self.ring[:b]
        self._shift[:b].copy_(ring[:, f:])
        ring[:, : w - f].copy_(self._shift[:b])
        new, mel, energy = ring[:, w - f:], self._mel[:b], self._energy[:b]
        torch.clamp(log_mel, d.log_mel_min, d.log_mel_max, out=mel)
        mel.sub_(d.log_mel_centre).div_(d.log_mel_scale)
        torch.amax(mel, dim=-1, keepdim=True, out=energy)
        new[..., :p].copy_(pitch)
        new[..., p:p + 1].copy_(energy)
        new[..., p + 1:].copy_(mel[..., : d.low_channels])
        for j in range(f if d.context_features else 0):
            self.running.update(self.context[:b], new[:, j])

    @staticmethod
    def _layer(x: torch.Tensor, n: int, layer: nn.Linear, out: torch.Tensor) -> torch.Tensor:
        rows = pad_rows(n)
        return torch.relu_(linear(x[:rows], layer.weight, out[:rows], bias=layer.bias))
