"""The depth transformer ("depformer"): the frame's audio codebooks, one after another.

For codebook k of a frame its input is `depformer_in[k](temporal output)` plus the embedding
of the previous token of the frame (the text token for k = 0, audio codebook k-1 after), and
every layer uses codebook k's own weights (`depformer_weights_per_step`, optionally shared
through a schedule). Its attention spans only this frame's codebooks so far: moshi opens a
fresh streaming state per frame, so the cache here is `dep_q` entries per slot, hidden again
at the start of every frame. No positional embedding (`depformer_pos_emb: none`).
"""

from __future__ import annotations

import torch

from foreground.kernels import attend_slots, linear, pad_rows
from foreground.moshi.gating import SiluGating
from foreground.moshi.lm_config import gating_hidden
from foreground.moshi.lm_weights import MoshiLM
from foreground.moshi.norm import RmsNormF32

NEG_INF = float("-inf")


class Depformer:
    def __init__(self, lm: MoshiLM, max_slots: int) -> None:
        cfg, dtype = lm.cfg, lm.dtype
        rows = pad_rows(max_slots)
        d, heads, head_dim, steps = cfg.depformer_dim, cfg.depformer_num_heads, cfg.depformer_head_dim, cfg.dep_q
        self.lm, self.scale = lm, head_dim ** -0.5
        # Frame-local: nothing here outlives a step, so none of it is session state.
        cache = (max_slots, heads, steps, head_dim)
        self._keys = [torch.zeros(cache, dtype=dtype) for _ in range(cfg.depformer_num_layers)]
        self._values = [torch.zeros(cache, dtype=dtype) for _ in range(cfg.depformer_num_layers)]
        self._visible = torch.full((max_slots, 1, steps), NEG_INF, dtype=dtype)
        self._x = torch.zeros(rows, d, dtype=dtype)
        self._embedded = torch.zeros(max_slots, d, dtype=dtype)
        self._normed = torch.zeros(rows, d, dtype=dtype)
        self._qkv = torch.zeros(rows, 3 * d, dtype=dtype)
        self._q = torch.zeros(max_slots, heads, 1, head_dim, dtype=dtype)
        self._scores = torch.zeros(max_slots, heads, 1, steps, dtype=dtype)
        self._attended = torch.zeros(rows, d, dtype=dtype)
        self._update = torch.zeros(rows, d, dtype=dtype)
        self._logits = torch.zeros(rows, cfg.card, dtype=dtype)
        self._norm = RmsNormF32(rows, d, dtype)
        max_hidden = max(gating_hidden(d, ff) for ff in cfg.depformer_dim_feedforward)
        self._gating = SiluGating(rows, max_hidden, dtype)

    def begin_frame(self, b: int) -> None:
        """Forget the previous frame's codebooks (moshi: a new depformer streaming state)."""
        self._visible[:b].fill_(NEG_INF)

    def step(self, codebook: int, temporal_out: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Logits [b, card] of `codebook` for b slots. temporal_out: [pad_rows(b), dim] (the
        temporal transformer's normed output); previous: [b] the frame's previous token."""
        lm, b = self.lm, previous.shape[0]
        cfg, rows = lm.cfg, pad_rows(b)
        d, heads, head_dim = cfg.depformer_dim, cfg.depformer_num_heads, cfg.depformer_head_dim
        weight_set = cfg.depformer_weight_index(codebook)

        x = linear(temporal_out, lm.depformer_in[cfg.depformer_in_index(codebook)], self._x[:rows])[:b]
        torch.index_select(lm.depformer_token_emb[codebook], 0, previous, out=self._embedded[:b])
        x.add_(self._embedded[:b])
        self._visible[:b, :, codebook].fill_(0.0)

        for layer, weights in enumerate(lm.depformer_layers):
            attention = weights.attention[weight_set]
            self._norm(x, weights.norm1, self._normed[:b])
            qkv = linear(self._normed[:rows], attention.in_proj, self._qkv[:rows])[:b]
            q = self._q[:b]
            torch.mul(qkv[:, :d].view(b, heads, 1, head_dim), self.scale, out=q)
            keys, values = self._keys[layer][:b], self._values[layer][:b]
            keys[:, :, codebook].copy_(qkv[:, d : 2 * d].view(b, heads, head_dim))
            values[:, :, codebook].copy_(qkv[:, 2 * d :].view(b, heads, head_dim))
            attend_slots(q, keys, values, self._visible[:b], self._scores[:b],
                         self._attended[:b].view(b, heads, 1, head_dim))
            x.add_(linear(self._attended[:rows], attention.out_proj, self._update[:rows])[:b])

            self._norm(x, weights.norm2, self._normed[:b])
            x.add_(self._gating(self._normed[:rows], weights.gating[weight_set], self._update[:rows], b)[:b])

        head = lm.audio_heads[codebook]
        return linear(self._x[:rows], head.weight, self._logits[:rows], head.bias)[:b]
