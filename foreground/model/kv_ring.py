"""Each session's KV cache: `sinks` entries that are never overwritten plus a ring window.

Memory is allocated once for `max_slots` sessions. A token at absolute position p lives at
cache entry p (p < sinks) or sinks + (p - sinks) mod window; `entry_pos` remembers which
position each entry holds (-1: empty), from which each step's attention mask follows: a query
at position q sees the entries whose position is in [0, q]. Keys and values are written
before attention, so a step of many tokens and many steps of one token reduce alike.
"""

from __future__ import annotations

import torch

from foreground.model.config import ModelConfig

NEG_INF = float("-inf")


class RingKVCache:
    def __init__(self, cfg: ModelConfig, max_slots: int, max_step_tokens: int) -> None:
        if max_step_tokens > cfg.attention_window:
            raise ValueError(f"a step of {max_step_tokens} tokens does not fit the "
                             f"attention_window of {cfg.attention_window}")
        self.sinks, self.window, self.size = cfg.attention_sinks, cfg.attention_window, cfg.cache_len
        self.kv_heads, self.max_slots = cfg.num_key_value_heads, max_slots
        shape = (max_slots, cfg.num_key_value_heads, self.size, cfg.head_dim)
        self.k = [torch.zeros(shape) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape) for _ in range(cfg.num_hidden_layers)]
        self.entry_pos = torch.full((max_slots, self.size), -1, dtype=torch.int64)
        self.next_pos = torch.zeros(max_slots, dtype=torch.int64)
        # Per-step plan, valid for the first `batch` slots after `plan()`.
        t = max_step_tokens
        self.positions = torch.zeros(max_slots, t, dtype=torch.int64)
        self.entries = torch.zeros(max_slots, t, dtype=torch.int64)
        self.write_index = torch.zeros(max_slots, t, self.kv_heads, dtype=torch.int64)
        self.mask = torch.zeros(max_slots, t, self.size)
        self._step = torch.arange(t, dtype=torch.int64)
        self._slot_base = (torch.arange(max_slots * self.kv_heads, dtype=torch.int64) * self.size
                           ).view(max_slots, 1, self.kv_heads)
        self._tmp = torch.zeros(max_slots, t, dtype=torch.int64)
        self._in_sinks = torch.zeros(max_slots, t, dtype=torch.bool)
        self._seen = torch.zeros(max_slots, t, self.size, dtype=torch.bool)
        self._filled = torch.zeros(max_slots, 1, self.size, dtype=torch.bool)

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.k, *self.v, self.entry_pos, self.next_pos]

    def reset(self, slot: int) -> None:
        self.entry_pos[slot].fill_(-1)
        self.next_pos[slot] = 0
        for cache in (*self.k, *self.v):
            cache[slot].zero_()

    def plan(self, batch: int, tokens: int) -> None:
        """Place the next `tokens` tokens of slots 0..batch-1; build their mask."""
        pos, ent, tmp = self.positions[:batch, :tokens], self.entries[:batch, :tokens], self._tmp[:batch, :tokens]
        torch.add(self.next_pos[:batch].unsqueeze(1), self._step[:tokens], out=pos)
        torch.sub(pos, self.sinks, out=tmp)
        tmp.remainder_(self.window).add_(self.sinks)
        torch.lt(pos, self.sinks, out=self._in_sinks[:batch, :tokens])
        torch.where(self._in_sinks[:batch, :tokens], pos, tmp, out=ent)
        self.entry_pos[:batch].scatter_(1, ent, pos)
        self.next_pos[:batch].add_(tokens)
        torch.add(self._slot_base[:batch], ent.unsqueeze(2), out=self.write_index[:batch, :tokens])
        # Visible: filled (position >= 0) and not in the future (position <= query's).
        entry_pos = self.entry_pos[:batch].unsqueeze(1)
        seen = self._seen[:batch, :tokens]
        torch.le(entry_pos, pos.unsqueeze(2), out=seen)
        torch.ge(entry_pos, 0, out=self._filled[:batch])
        seen.logical_and_(self._filled[:batch])
        mask = self.mask[:batch, :tokens]
        mask.zero_().masked_fill_(seen.logical_not_(), NEG_INF)

    def write(self, layer: int, batch: int, tokens: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [batch*tokens*kv_heads, head_dim] in (slot, token, head) order."""
        index = self.write_index[:batch, :tokens].reshape(-1)
        d = k.shape[-1]
        self.k[layer].view(-1, d).index_copy_(0, index, k)
        self.v[layer].view(-1, d).index_copy_(0, index, v)
