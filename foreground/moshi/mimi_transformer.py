"""Mimi's streaming transformers (moshi's `ProjectedTransformer` as `get_mimi` builds it),
stepped for many sessions at once.

A layer: x += s1 * attention(LayerNorm1(x)); x += s2 * W2 gelu(W1 LayerNorm2(x)), with s1, s2
the LayerScale vectors. Attention is causal, with interleaved RoPE at each slot's own stream
position, over a ring of `context` keys per slot. As in moshi's `RingKVCache`, a step's keys
are written into the ring before its queries attend: after a step the ring holds the last
`context` positions, so the step's last query sees `context` keys (itself included) and the
query before it one fewer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from foreground.kernels import attend_slots, linear, pad_rows
from foreground.moshi.mimi_config import TransformerConfig
from foreground.moshi.mimi_weights import Init, WeightSource

LAYER_NORM_EPS = 1e-5
NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class TransformerLayerWeights:
    in_proj: torch.Tensor  # [3 * d, d]: q, k, v, each (head, head_dim)
    out_proj: torch.Tensor  # [d, d]
    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor
    linear1: torch.Tensor  # [ff, d]
    linear2: torch.Tensor  # [d, ff]
    scale1: torch.Tensor | None  # LayerScale
    scale2: torch.Tensor | None

    @classmethod
    def take(cls, source: WeightSource, prefix: str, cfg: TransformerConfig) -> TransformerLayerWeights:
        d, ff = cfg.d_model, cfg.dim_feedforward

        def take(name: str, shape: tuple[int, ...], init: Init = Init.FAN_IN, fill: float = 0.0) -> torch.Tensor:
            return source.take(f"{prefix}.{name}", shape, init, fill=fill)

        out_proj = take("self_attn.out_projs.0.weight", (d, d))
        in_proj = take("self_attn.in_projs.0.weight", (3 * d, d))
        norms = [take(f"norm{i}.{part}", (d,), Init.CONSTANT, fill=1.0 if part == "weight" else 0.0)
                 for i in (1, 2) for part in ("weight", "bias")]
        linear1, linear2 = take("linear1.weight", (ff, d)), take("linear2.weight", (d, ff))
        scales = [None, None]
        if cfg.layer_scale is not None:
            scales = [take(f"layer_scale_{i}.scale", (d,), Init.CONSTANT, cfg.layer_scale) for i in (1, 2)]
        return cls(in_proj, out_proj, *norms, linear1, linear2, *scales)


@dataclass(frozen=True, slots=True)
class TransformerWeights:
    layers: tuple[TransformerLayerWeights, ...]

    @classmethod
    def take(cls, source: WeightSource, prefix: str, cfg: TransformerConfig) -> TransformerWeights:
        """`prefix` is e.g. "encoder_transformer" (moshi's ProjectedTransformer)."""
        return cls(tuple(TransformerLayerWeights.take(source, f"{prefix}.transformer.layers.{i}", cfg)
                         for i in range(cfg.num_layers)))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
               squares: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """nn.LayerNorm (biased variance) row by row: x, out, squares [rows, d]; mean, var [rows, 1]."""
    torch.mean(x, dim=-1, keepdim=True, out=mean)
    torch.sub(x, mean, out=out)
    torch.mul(out, out, out=squares)
    torch.mean(squares, dim=-1, keepdim=True, out=var)
    var.add_(LAYER_NORM_EPS).rsqrt_()
    return out.mul_(var).mul_(weight).add_(bias)


def gelu_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place, x * (1 + erf(x / sqrt 2)) / 2, from ops that round every element the
    same wherever it sits in the tensor (torch's fused `gelu` does not: see `seanet.elu`)."""
    torch.mul(x, math.sqrt(0.5), out=scratch)
    scratch.erf_().add_(1.0)
    return x.mul_(scratch).mul_(0.5)


def rotate_pairs_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, tmp_a: torch.Tensor,
                  tmp_b: torch.Tensor) -> None:
    """Interleaved RoPE in place, the products of moshi's `apply_rope`: each pair (re, im) of
    x [..., head_dim] becomes (re cos - im sin, im cos + re sin); tmp_a, tmp_b [..., head_dim / 2]."""
    pairs = x.view(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    torch.mul(re, sin, out=tmp_a)
    torch.mul(im, sin, out=tmp_b)
    re.mul_(cos).sub_(tmp_b)
    im.mul_(cos).add_(tmp_a)


class RingPositions:
    """Each slot's stream position, the ring entries a step's keys go to, what its queries may
    see (an additive mask) and their RoPE angles; shared by the layers of one transformer."""

    def __init__(self, cfg: TransformerConfig, max_slots: int, t: int, dtype: torch.dtype) -> None:
        ctx, heads, half = cfg.context, cfg.num_heads, cfg.head_dim // 2
        self.context, self.t = ctx, t
        # Per-slot state.
        self.next_position = torch.zeros(max_slots, dtype=torch.int64)
        self.entry_position = torch.full((max_slots, ctx), -1, dtype=torch.int64)  # -1: empty
        # This step's plan, valid for the first `batch` slots after `advance(batch)`.
        self.positions = torch.zeros(max_slots, t, dtype=torch.int64)
        self.entries = torch.zeros(max_slots, t, dtype=torch.int64)
        self.cache_rows = torch.zeros(max_slots, heads, t, dtype=torch.int64)  # in [slots * heads * ctx]
        self.mask = torch.zeros(max_slots, t, ctx, dtype=dtype)
        self.cos = torch.zeros(max_slots, 1, t, half, dtype=dtype)
        self.sin = torch.zeros(max_slots, 1, t, half, dtype=dtype)
        # Constants and scratch.
        self.frequencies = torch.exp(torch.arange(half, dtype=torch.float32)
                                     * (-math.log(cfg.max_period) * 2 / cfg.head_dim))  # as moshi
        self._step_offsets = torch.arange(t, dtype=torch.int64)
        self._row_base = (torch.arange(max_slots * heads, dtype=torch.int64) * ctx).view(max_slots, heads, 1)
        self._visible = torch.zeros(max_slots, t, ctx, dtype=torch.bool)
        self._filled = torch.zeros(max_slots, 1, ctx, dtype=torch.bool)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.next_position, self.entry_position]

    def reset(self, slot: int) -> None:
        self.next_position[slot] = 0
        self.entry_position[slot] = -1

    def advance(self, batch: int, active: torch.Tensor | None = None) -> None:
        """Place the next `t` positions of slots 0..batch-1 in their rings; build mask and angles.

        A slot not `active` stays where it is: its next step writes the same ring entries again,
        before anything reads them (moshi's RingKVCache under an `exec_mask` does the same)."""
        t = self.t
        positions, entries = self.positions[:batch], self.entries[:batch]
        torch.add(self.next_position[:batch].unsqueeze(1), self._step_offsets, out=positions)
        torch.remainder(positions, self.context, out=entries)
        self.entry_position[:batch].scatter_(1, entries, positions)
        if active is None:
            self.next_position[:batch].add_(t)
        else:
            self.next_position[:batch].add_(active, alpha=t)
        torch.add(self._row_base[:batch], entries.unsqueeze(1), out=self.cache_rows[:batch])
        # Visible: filled and not in the future. (Not too old either, but the ring holds only
        # the last `context` positions, which is what moshi's `delta < context` keeps.)
        entry_position = self.entry_position[:batch].unsqueeze(1)
        visible = self._visible[:batch]
        torch.le(entry_position, positions.unsqueeze(2), out=visible)
        torch.ge(entry_position, 0, out=self._filled[:batch])
        visible.logical_and_(self._filled[:batch])
        self.mask[:batch].zero_().masked_fill_(visible.logical_not_(), NEG_INF)
        angles = self.cos[:batch]
        torch.mul(positions.view(batch, 1, t, 1), self.frequencies, out=angles)
        torch.sin(angles, out=self.sin[:batch])
        angles.cos_()


class TransformerStream:
    """One Mimi transformer for `max_slots` sessions, `t` frames a step.

    The caller writes a step's input into `input(batch)` and calls `step(batch)`.
    """

    def __init__(self, weights: TransformerWeights, cfg: TransformerConfig, max_slots: int, t: int) -> None:
        self.weights, self.cfg, self.t = weights, cfg, t
        d, heads, head_dim, ctx = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.context
        rows = pad_rows(max_slots * t)
        dtype = weights.layers[0].in_proj.dtype
        zeros = functools.partial(torch.zeros, dtype=dtype)
        self.ring = RingPositions(cfg, max_slots, t, dtype)
        # Per-slot state: every layer's keys and values (rotated keys, as moshi caches them).
        self.keys = [zeros(max_slots, heads, ctx, head_dim) for _ in weights.layers]
        self.values = [zeros(max_slots, heads, ctx, head_dim) for _ in weights.layers]
        # Row buffers ([rows, width]) and per-slot attention buffers.
        self.x = zeros(rows, d)  # the residual stream
        self.normed, self.squares, self.update, self.attn_rows = (zeros(rows, d) for _ in range(4))
        self.mean, self.var = zeros(rows, 1), zeros(rows, 1)
        self.qkv = zeros(rows, 3 * d)
        self.hidden, self.gelu_scratch = zeros(rows, cfg.dim_feedforward), zeros(rows, cfg.dim_feedforward)
        self.q, self.k, self.v, self.attn = (zeros(max_slots, heads, t, head_dim) for _ in range(4))
        self.rot_a, self.rot_b = zeros(max_slots, heads, t, head_dim // 2), zeros(max_slots, heads, t, head_dim // 2)
        self.scores = zeros(max_slots, heads, t, ctx)
        self.q_scale = 1.0 / math.sqrt(head_dim)

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, *self.ring.state_tensors()]

    def reset(self, slot: int) -> None:
        self.ring.reset(slot)
        for cache in (*self.keys, *self.values):
            cache[slot].zero_()

    def input(self, batch: int) -> torch.Tensor:
        return self.x[: batch * self.t].view(batch, self.t, -1)

    def step(self, batch: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """Run the input written to `input(batch)` through every layer; returns [batch, t, d].
        Slots not `active` ([batch] bool, None: all are) keep their stream position."""
        self.ring.advance(batch, active)
        for layer, keys, values in zip(self.weights.layers, self.keys, self.values, strict=True):
            self._attention(layer, keys, values, batch)
            self._feed_forward(layer, batch)
        return self.input(batch)

    def _attention(self, w: TransformerLayerWeights, keys: torch.Tensor, values: torch.Tensor, batch: int) -> None:
        t, heads, head_dim = self.t, self.cfg.num_heads, self.cfg.head_dim
        rows, padded = batch * t, pad_rows(batch * t)
        layer_norm(self.x[:rows], w.norm1_weight, w.norm1_bias, self.normed[:rows], self.squares[:rows],
                   self.mean[:rows], self.var[:rows])
        linear(self.normed[:padded], w.in_proj, self.qkv[:padded])
        q_k_v = self.qkv[:rows].view(batch, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # [3, b, h, t, hd]
        q, k, v = self.q[:batch], self.k[:batch], self.v[:batch]
        q.copy_(q_k_v[0])
        k.copy_(q_k_v[1])
        v.copy_(q_k_v[2])
        cos, sin = self.ring.cos[:batch], self.ring.sin[:batch]
        rotate_pairs_(q, cos, sin, self.rot_a[:batch], self.rot_b[:batch])
        rotate_pairs_(k, cos, sin, self.rot_a[:batch], self.rot_b[:batch])
        q.mul_(self.q_scale)
        cache_rows = self.ring.cache_rows[:batch].view(-1)
        keys.view(-1, head_dim).index_copy_(0, cache_rows, k.view(-1, head_dim))
        values.view(-1, head_dim).index_copy_(0, cache_rows, v.view(-1, head_dim))
        attn = attend_slots(q, keys[:batch], values[:batch], self.ring.mask[:batch], self.scores[:batch],
                            self.attn[:batch])
        self.attn_rows[:rows].view(batch, t, heads, head_dim).copy_(attn.permute(0, 2, 1, 3))
        linear(self.attn_rows[:padded], w.out_proj, self.update[:padded])
        self._add_update(w.scale1, rows)

    def _feed_forward(self, w: TransformerLayerWeights, batch: int) -> None:
        rows, padded = batch * self.t, pad_rows(batch * self.t)
        layer_norm(self.x[:rows], w.norm2_weight, w.norm2_bias, self.normed[:rows], self.squares[:rows],
                   self.mean[:rows], self.var[:rows])
        linear(self.normed[:padded], w.linear1, self.hidden[:padded])
        gelu_(self.hidden[:rows], self.gelu_scratch[:rows])
        linear(self.hidden[:padded], w.linear2, self.update[:padded])
        self._add_update(w.scale2, rows)

    def _add_update(self, scale: torch.Tensor | None, rows: int) -> None:
        update = self.update[:rows]
        if scale is not None:
            update.mul_(scale)
        self.x[:rows].add_(update)
