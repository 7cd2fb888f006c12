"""The temporal transformer: one step per 80 ms frame, over each session's own window.

Input: the sum of the embeddings of every stream's token (text + all audio codebooks; the
`zero_token_id` -1 embeds to zeros, as moshi's ScaledEmbedding does). Then `num_layers` pre-norm
layers (rms_norm_f32, attention with interleaved rope, silu gating, no layer scale), the
output norm, and the text head. The output (after `out_norm`) also feeds the depformer.

Each slot's keys and values live in its own ring of `context` entries: frame p is entry
p mod context, as in moshi's RingKVCache whose capacity is the context. An entry becomes
visible when written and stays visible until overwritten, which is exactly moshi's mask
(filled, not in the future, less than `context` frames old), kept here as one additive mask
row per slot, so a step computes no mask at all.
"""

from __future__ import annotations

import torch

from foreground.kernels import attend_slots, linear, pad_rows
from foreground.moshi.gating import SiluGating
from foreground.moshi.lm_config import gating_hidden
from foreground.moshi.lm_weights import MoshiLM
from foreground.moshi.norm import RmsNormF32
from foreground.moshi.rope import InterleavedRope

NEG_INF = float("-inf")
ZERO_TOKEN = -1  # LMModel's `zero_token_id`: "no input here", embedded as zeros


class TemporalTransformer:
    def __init__(self, lm: MoshiLM, max_slots: int) -> None:
        cfg, dtype = lm.cfg, lm.dtype
        rows = pad_rows(max_slots)  # linears compute whole row tiles (see kernels.matmul)
        d, heads, head_dim = cfg.dim, cfg.num_heads, cfg.head_dim
        self.lm, self.scale = lm, head_dim ** -0.5
        # Session state: the KV rings and which entries of them hold a frame.
        cache = (max_slots, heads, cfg.context, head_dim)
        self.keys = [torch.zeros(cache, dtype=dtype) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(cache, dtype=dtype) for _ in range(cfg.num_layers)]
        self.visible = torch.full((max_slots, 1, cfg.context), NEG_INF, dtype=dtype)  # 0: visible
        # Per-step buffers.
        # Stream-major, so each stream's tokens are one contiguous index vector.
        self._token = torch.zeros(cfg.num_streams, max_slots, dtype=torch.int64)
        self._is_zero = torch.zeros(cfg.num_streams, max_slots, 1, dtype=torch.bool)
        self._embedded = torch.zeros(max_slots, d, dtype=dtype)
        self._entry = torch.zeros(max_slots, dtype=torch.int64)
        self.x = torch.zeros(rows, d, dtype=dtype)  # the residual stream
        self._normed = torch.zeros(rows, d, dtype=dtype)
        self._qkv = torch.zeros(rows, 3 * d, dtype=dtype)
        self._q = torch.zeros(max_slots, heads, 1, head_dim, dtype=dtype)
        self._scores = torch.zeros(max_slots, heads, 1, cfg.context, dtype=dtype)
        self._attended = torch.zeros(rows, d, dtype=dtype)
        self._update = torch.zeros(rows, d, dtype=dtype)
        self.out = torch.zeros(rows, d, dtype=dtype)  # after out_norm: the depformer's input
        self.text_logits = torch.zeros(rows, cfg.text_card, dtype=dtype)
        self._norm = RmsNormF32(rows, d, dtype)
        self._gating = SiluGating(rows, gating_hidden(d, cfg.dim_feedforward), dtype)
        self._rope = InterleavedRope(rows, 2 * heads, head_dim, cfg.max_period, dtype)

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.visible]

    def reset(self, slot: int) -> None:
        self.visible[slot].fill_(NEG_INF)
        for cache in (*self.keys, *self.values):
            cache[slot].zero_()

    def step(self, tokens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """tokens: [b, streams] this frame's inputs; frames: [b] each slot's frame index.
        Fills `out` and `text_logits` (first b rows valid); returns text_logits[:b]."""
        lm, b = self.lm, tokens.shape[0]
        rows = pad_rows(b)
        cfg, d, heads = lm.cfg, lm.cfg.dim, lm.cfg.num_heads
        x = self.x[:b]
        self._embed(tokens, x)

        self._rope.set_positions(frames)
        entry = self._entry[:b]
        torch.remainder(frames, cfg.context, out=entry)
        self.visible[:b].scatter_(2, entry.view(b, 1, 1), 0.0)
        write_at = entry.view(b, 1, 1, 1).expand(b, heads, 1, cfg.head_dim)

        for layer, weights in enumerate(lm.temporal_layers):
            attention = weights.attention[0]
            self._norm(x, weights.norm1, self._normed[:b])
            qkv = linear(self._normed[:rows], attention.in_proj, self._qkv[:rows])[:b]
            self._rope.rotate_(qkv[:, : 2 * d].view(b, 2 * heads, cfg.head_dim))
            q = self._q[:b]
            torch.mul(qkv[:, :d].view(b, heads, 1, cfg.head_dim), self.scale, out=q)
            keys, values = self.keys[layer][:b], self.values[layer][:b]
            keys.scatter_(2, write_at, qkv[:, d : 2 * d].view(b, heads, 1, cfg.head_dim))
            values.scatter_(2, write_at, qkv[:, 2 * d :].view(b, heads, 1, cfg.head_dim))
            attend_slots(q, keys, values, self.visible[:b], self._scores[:b],
                         self._attended[:b].view(b, heads, 1, cfg.head_dim))
            x.add_(linear(self._attended[:rows], attention.out_proj, self._update[:rows])[:b])

            self._norm(x, weights.norm2, self._normed[:b])
            x.add_(self._gating(self._normed[:rows], weights.gating[0], self._update[:rows], b)[:b])

        self._norm(x, lm.out_norm, self.out[:b])
        head = lm.text_head
        return linear(self.out[:rows], head.weight, self.text_logits[:rows], head.bias)[:b]

    def _embed(self, tokens: torch.Tensor, x: torch.Tensor) -> None:
        """x = the audio codebooks' embeddings summed in order, then + the text embedding
        (moshi's order of additions; starting from 0 adds nothing to the rounding)."""
        b = tokens.shape[0]
        token, is_zero, embedded = self._token[:, :b], self._is_zero[:, :b], self._embedded[:b]
        torch.eq(tokens.t().unsqueeze(2), ZERO_TOKEN, out=is_zero)
        torch.clamp(tokens.t(), min=0, out=token)
        x.zero_()
        audio_streams = range(1, self.lm.cfg.num_streams)  # stream 0 is the text
        for stream, table in [*zip(audio_streams, self.lm.audio_emb, strict=True), (0, self.lm.text_emb)]:
            torch.index_select(table, 0, token[stream], out=embedded)
            x.add_(embedded.masked_fill_(is_zero[stream], 0.0))
