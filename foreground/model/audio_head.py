"""The flow-matching audio head: the next 200 ms of audio as log-mel frames.

Conditioned on a frame position's hidden state, a small MLP predicts the velocity that carries
noise to a log-mel frame; `flow_steps` Euler steps integrate it (rectified flow). The noise
comes from a fixed table indexed per session and tick, so a session's audio does not depend on
the rest of the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from foreground.kernels import linear
from foreground.kernels.matmul import pad_rows
from foreground.model.config import ModelConfig

TIME_FEATURES = 32


def time_features(t: float) -> torch.Tensor:
    """Sinusoidal features of the flow time t in [0, 1)."""
    freqs = torch.exp(torch.arange(TIME_FEATURES // 2) * (-math.log(1000.0) / (TIME_FEATURES // 2)))
    angles = t * 1000.0 * freqs
    return torch.cat([angles.sin(), angles.cos()])


class FlowHeadWorkspace:
    def __init__(self, rows: int, hidden: int, channels: int) -> None:
        rows = pad_rows(rows)
        self.state = torch.zeros(rows, channels)
        self.cond = torch.zeros(rows, hidden)
        self.z = torch.zeros(rows, hidden)
        self.z2 = torch.zeros(rows, hidden)
        self.velocity = torch.zeros(rows, channels)


class FlowAudioHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hidden, channels = cfg.hidden_size, cfg.flow_hidden, cfg.audio.n_mels
        self.steps = cfg.audio.flow_steps
        self.cond_proj = nn.Linear(d, hidden)
        self.x_proj = nn.Linear(channels, hidden, bias=False)
        self.time_proj = nn.Linear(TIME_FEATURES, hidden, bias=False)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, channels)
        self.time_rows: torch.Tensor | None = None

    def prepare(self) -> None:
        """The time embedding of each Euler step is a constant: compute it once."""
        with torch.no_grad():
            feats = torch.stack([time_features(s / self.steps) for s in range(self.steps)])
            self.time_rows = self.time_proj(feats)

    def sample(self, cond_h: torch.Tensor, m: int, noise: torch.Tensor, ws: FlowHeadWorkspace,
               out: torch.Tensor) -> torch.Tensor:
        """out[m, C] = the flow's endpoint from noise[m, C], conditioned on cond_h[:m]
        (cond_h holds at least pad_rows(m) rows)."""
        rows = pad_rows(m)
        cond = linear(cond_h[:rows], self.cond_proj.weight, ws.cond[:rows], bias=self.cond_proj.bias)
        state, z, z2, velocity = ws.state[:rows], ws.z[:rows], ws.z2[:rows], ws.velocity[:rows]
        state[:m].copy_(noise)
        for s in range(self.steps):
            linear(state, self.x_proj.weight, z).add_(cond).add_(self.time_rows[s])
            nn.functional.silu(z, inplace=True)
            nn.functional.silu(linear(z, self.mid.weight, z2, bias=self.mid.bias), inplace=True)
            linear(z2, self.out.weight, velocity, bias=self.out.bias)
            state.add_(velocity, alpha=1.0 / self.steps)
        return out.copy_(state[:m])
