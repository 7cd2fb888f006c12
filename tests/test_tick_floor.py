"""The tick's floor and stage clock, and the CPU kernels the profile changed (softmax, rotary)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cluster.bench.tick import synthetic_chunks
from cluster.bench.tick_floor import stage_table, tick_flops
from foreground.engine.stage_clock import STAGES
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.kernels.rotary import apply_rotary_, interleave_rotary_rows, rotary_inv_freq, rotary_table_
from foreground.kernels.softmax import softmax_
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.model.family import ReferenceFamily


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


@pytest.fixture(scope="module")
def engine(model):
    engine = TickScheduler(ReferenceFamily(model), max_slots=8, turn=TurnPolicyConfig(policy="hybrid"))
    for i in range(5):
        engine.join(f"s{i}", seed=i)
    return engine


def _tick(engine):
    chunks = synthetic_chunks(5, engine.shape.samples(16_000), seed=1)
    for i, chunk in enumerate(chunks):
        engine.submit_audio(f"s{i}", chunk)
    return engine.tick()


def test_the_floor_counts_no_more_than_the_engine_computes(engine):
    """The count is the model's need; the engine computes that plus padding rows, so torch's
    own count of a tick's matmuls is at least the floor's, and not wildly more."""
    _tick(engine)
    with FlopCounterMode(display=False) as counter:
        _tick(engine)
    counted = counter.get_total_flops()
    floor = sum(tick_flops(engine, 5).values())
    assert 0.3 * counted < floor <= counted


def test_the_floor_grows_with_the_batch(engine):
    one, eight = (sum(tick_flops(engine, b).values()) for b in (1, 8))
    assert eight == 8 * one


def test_a_text_servers_count_follows_its_context_and_the_computed_tokens(model):
    """`bench compare`'s floor for vLLM: one more key attended costs QK^T and AV over every
    head; one more computed token costs the decoder again (projections, router, experts)."""
    from foreground.model.tick_flops import decoder_layer_flops, prefill_flops

    cfg = model.cfg
    heads, layers = cfg.num_attention_heads * cfg.head_dim, cfg.num_hidden_layers
    assert prefill_flops(cfg, 1, 101) - prefill_flops(cfg, 1, 100) == layers * 4 * heads
    attention, moe = decoder_layer_flops(cfg, 1, attended=0)
    assert prefill_flops(cfg, 2, 100) - prefill_flops(cfg, 1, 100) == layers * (attention + moe + 4 * heads * 99)


def test_stages_tile_the_tick_and_the_clock_is_off_after(engine):
    import time

    start = time.perf_counter()
    table = stage_table(lambda: _tick(engine), 3, tick_flops(engine, 5), gflops=100.0)
    wall_ms = (time.perf_counter() - start) * 1000 / 3
    assert {"engine.vad", "backbone.attention", "backbone.moe", "model.voice"} <= table.keys()
    assert sum(row["ms"] for row in table.values()) <= wall_ms
    assert sum(row["ms"] for row in table.values()) > 0.5 * wall_ms  # no big gap between laps
    assert table["backbone.moe"]["floor_ms"] > 0 and table["engine.gather"]["floor_ms"] == 0
    assert not STAGES.enabled


def test_softmax_in_place_matches_torch_and_ignores_the_batch():
    scores = torch.randn(6, 2, 12, 40, generator=torch.Generator().manual_seed(0))
    scores[..., 30:] = float("-inf")
    expected = torch.softmax(scores, dim=-1)
    batched, alone = scores.clone(), scores[:1].clone()
    softmax_(batched)
    softmax_(alone)
    assert torch.equal(batched, expected) and torch.equal(alone, batched[:1])
    with pytest.raises(ValueError, match="contiguous"):
        softmax_(scores.transpose(0, 1))


def _rotate_half(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def test_interleaved_rotary_equals_rotate_half_on_the_projection():
    """Rows interleaved at load + one complex multiply = transformers' rotate_half rotation of
    the checkpoint's projection, pair for pair."""
    heads, head_dim, d, n = 2, 8, 16, 5
    gen = torch.Generator().manual_seed(2)
    weight, x = torch.randn(heads * head_dim, d, generator=gen), torch.randn(n, d, generator=gen)
    positions = torch.arange(n) * 7
    inv_freq = rotary_inv_freq(head_dim, 10_000.0)
    angles = positions[:, None].float() * inv_freq
    expected = _rotate_half((x @ weight.T).view(n, heads, head_dim), angles.cos()[:, None], angles.sin()[:, None])

    ours = (x @ interleave_rotary_rows(weight, heads).T).view(n, heads, head_dim)
    rotation = torch.zeros(n, 1, head_dim // 2, dtype=torch.complex64)
    rotary_table_(positions.view(n, 1), inv_freq, torch.zeros(n, 1, head_dim // 2), rotation)
    apply_rotary_(ours, rotation)
    half = head_dim // 2
    assert torch.allclose(ours[..., 0::2], expected[..., :half], atol=1e-5)
    assert torch.allclose(ours[..., 1::2], expected[..., half:], atol=1e-5)


def test_warm_up_checks_every_kernel_shape_before_a_live_tick_and_leaves_nothing(model):
    """A replica warms up before it serves: a live session's first tick (audio and video) then
    meets no matmul shape that was not checked already, and the warm-up leaves no session,
    no job and the tick count at 0."""
    from foreground.engine.delegation import CollectingJobSink
    from foreground.engine.warm_up import warm_up
    from foreground.kernels import matmul

    fresh = TickScheduler(ReferenceFamily(model), max_slots=2, turn=TurnPolicyConfig(policy="hybrid"), jobs=CollectingJobSink())
    matmul._one_gemm.clear()
    warm_up(fresh)
    checked = set(matmul._one_gemm)
    assert checked and fresh.live == 0 and fresh.tick_count == 0 and not fresh.jobs.jobs
    fresh.join("live", seed=1)
    fresh.submit_audio("live", synthetic_chunks(1, fresh.shape.samples(16_000), seed=2)[0])
    fresh.submit_video("live", raw_rgb=bytes(32 * 24 * 3), width=32, height=24)
    assert fresh.tick()[0].tick == 0
    assert set(matmul._one_gemm) == checked
