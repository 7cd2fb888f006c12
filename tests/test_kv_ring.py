"""The ring KV cache: attention sees exactly the sinks plus the window, for hours of ticks."""

import torch

from foreground.model.kv_ring import RingKVCache
from foreground.model.config import ModelConfig


def _visible(cache: RingKVCache, slot: int, j: int) -> set[int]:
    seen = cache.mask[slot, j] == 0
    return set(cache.entry_pos[slot][seen].tolist())


def test_each_query_sees_sinks_plus_window_through_many_wraps():
    cfg = ModelConfig(attention_sinks=4, attention_window=40)
    t = cfg.tokens_per_tick  # 12 tokens a tick: the window wraps every few ticks
    cache = RingKVCache(cfg, max_slots=2, max_step_tokens=t)
    for tick in range(2100):
        cache.plan(1, t)
        if tick % 97 and tick > 5:
            continue  # check a spread of ticks, including the first few
        last = (tick + 1) * t - 1
        for j in range(t):
            q = tick * t + j
            window = set(range(max(cfg.attention_sinks, last - cfg.attention_window + 1), q + 1))
            expected = set(range(min(cfg.attention_sinks, q + 1))) | window
            assert _visible(cache, 0, j) == expected, (tick, j)
    assert int(cache.next_pos[0]) == 2100 * t


def test_sessions_have_their_own_positions_and_reset_empties_a_slot():
    cfg = ModelConfig()
    t = cfg.tokens_per_tick
    cache = RingKVCache(cfg, max_slots=3, max_step_tokens=t)
    cache.plan(1, t)
    cache.plan(2, t)  # slot 1 joins one tick later
    assert cache.positions[0, 0].item() == t and cache.positions[1, 0].item() == 0
    assert _visible(cache, 1, t - 1) == set(range(t))
    cache.reset(0)
    assert (cache.entry_pos[0] == -1).all() and cache.next_pos[0].item() == 0


def test_writes_land_in_the_planned_entries():
    cfg = ModelConfig()
    t, kvh, d = cfg.tokens_per_tick, cfg.num_key_value_heads, cfg.head_dim
    cache = RingKVCache(cfg, max_slots=2, max_step_tokens=t)
    cache.plan(2, t)
    k = torch.arange(2 * t * kvh, dtype=torch.float32).repeat_interleave(d).view(2 * t * kvh, d)
    cache.write(0, 2, t, k, -k)
    # slot 1, token 5, head 1 -> row (1*t + 5)*kvh + 1
    row = (1 * t + 5) * kvh + 1
    entry = int(cache.entries[1, 5])
    assert torch.equal(cache.k[0][1, 1, entry], k[row]) and torch.equal(cache.v[0][1, 1, entry], -k[row])
