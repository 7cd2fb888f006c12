"""Batch invariance: a session's outputs do not depend on who else shares its ticks.

Probe sessions get fixed input streams; their audio, text, log-mel and head logits are
recorded when each runs alone, then compared bitwise with runs in batches of 2..64, in other
orders, and while filler sessions join and leave (which moves sessions between slots).
"""

import random

import numpy as np
import pytest
import torch

from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint

TICKS = 6
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=1))


def _stream(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    t = np.arange(3200) / 16_000
    chunks = []
    for k in range(TICKS):
        f0 = rng.uniform(90, 300)
        wave = rng.uniform(0.02, 0.3) * np.sin(2 * np.pi * f0 * t + k) + rng.normal(0, 0.02, t.size)
        chunks.append((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
    return chunks


def _run(model, probes: list[str], fillers: list[str], order_seed: int, churn: bool) -> dict:
    """Run probes (and fillers) for TICKS ticks; record each probe's outputs per tick."""
    engine = TickScheduler(ReferenceFamily(model), max_slots=64, turn=TurnPolicyConfig(policy="vad", silence_threshold_ms=200))
    names = probes + fillers
    random.Random(order_seed).shuffle(names)
    live = set()
    for name in names:
        engine.join(name, seed=hash(name) % 997)
        live.add(name)
    streams = {name: _stream(int(name.split("-")[1])) for name in names}
    record: dict[str, list] = {p: [] for p in probes}
    rng = random.Random(order_seed + 1)
    for tick in range(TICKS):
        if churn and tick in (2, 4):
            for name in rng.sample(sorted(live - set(probes)), k=min(3, len(live - set(probes)))):
                engine.leave(name)
                live.discard(name)
            fresh = f"late-{900 + tick}"
            engine.join(fresh, seed=5)
            streams[fresh] = _stream(900 + tick)
            live.add(fresh)
        for name in sorted(live):
            engine.submit_audio(name, streams[name][tick])
        outputs = {o.session_id: o for o in engine.tick()}
        for p in probes:
            slot = engine.slots.get(p).slot
            record[p].append((outputs[p].pcm16, outputs[p].speech,
                              engine.family.outputs.text_ids[slot].clone(), engine.family.outputs.log_mel[slot].clone(),
                              engine.family.outputs.turn_logits[slot].clone(), engine.family.outputs.delegate_logit[slot].clone()))
    return record


def check_same_outputs(alone, batched, probe):
    for tick, (a, b) in enumerate(zip(alone, batched, strict=True)):
        assert a[0] == b[0], f"{probe} tick {tick}: audio differs"
        assert a[1] == b[1], f"{probe} tick {tick}: turn decision differs"
        for name, x, y in zip(("text", "log_mel", "turn", "delegate"), a[2:], b[2:], strict=True):
            assert torch.equal(x, y), f"{probe} tick {tick}: {name} differs (max {float((x - y).abs().max())})"


PROBES = ["probe-1", "probe-2", "probe-3"]


@pytest.fixture(scope="module")
def alone(model):
    return {p: _run(model, [p], [], 0, churn=False)[p] for p in PROBES}


@pytest.mark.parametrize("batch", [2, 3, 8, 17, 64])
def test_probes_match_their_solo_runs_in_any_batch(model, alone, batch):
    fillers = [f"filler-{100 + i}" for i in range(batch - len(PROBES))] if batch > 3 else []
    probes = PROBES[: min(batch, 3)]
    record = _run(model, probes, fillers, order_seed=batch, churn=False)
    for p in probes:
        check_same_outputs(alone[p], record[p], p)


def test_probes_match_while_others_join_and_leave(model, alone):
    fillers = [f"filler-{200 + i}" for i in range(20)]
    record = _run(model, PROBES, fillers, order_seed=7, churn=True)
    for p in PROBES:
        check_same_outputs(alone[p], record[p], p)


def test_prefill_in_one_step_equals_tick_by_tick(model):
    """KV is written before attention and attention always spans the whole fixed-size cache,
    so one step over a history reduces exactly like the ticks that made it."""
    from foreground.model.kv_ring import RingKVCache
    from foreground.model.backbone import Backbone, BackboneWorkspace

    cfg, ticks = model.cfg, 10
    t = cfg.tokens_per_tick
    backbone = Backbone(cfg, model.model)
    history = torch.randn(2, ticks * t, cfg.hidden_size, generator=torch.Generator().manual_seed(0))

    ws, cache = BackboneWorkspace(cfg, 2, t), RingKVCache(cfg, 2, t)
    stepped = []
    for k in range(ticks):
        ws.hidden[: 2 * t].view(2, t, -1).copy_(history[:, k * t : (k + 1) * t])
        cache.plan(2, t)
        stepped.append(backbone.step(ws, cache, 2).view(2, t, -1).clone())
    stepped = torch.cat(stepped, dim=1)

    long = ticks * t
    ws_long, cache_long = BackboneWorkspace(cfg, 2, long), RingKVCache(cfg, 2, long)
    ws_long.hidden[: 2 * long].view(2, long, -1).copy_(history)
    cache_long.plan(2, long)
    prefilled = backbone.step(ws_long, cache_long, 2).view(2, long, -1)
    assert torch.equal(prefilled, stepped)
    assert all(torch.equal(cache.k[i][:2], cache_long.k[i][:2]) for i in range(cfg.num_hidden_layers))


def test_moe_output_of_a_token_does_not_depend_on_token_order_or_count(model):
    from foreground.kernels import pad_rows
    from foreground.model.moe import MoeWorkspace

    cfg, moe = model.cfg, model.model.layers[0].block_sparse_moe
    moe.prepare()
    n = 50
    x = torch.randn(pad_rows(n), cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    ws = MoeWorkspace(cfg, n)
    full = moe.step(x, n, ws, torch.empty(n, cfg.hidden_size)).clone()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    shuffled = torch.zeros_like(x)
    shuffled[:n] = x[perm]
    assert torch.equal(moe.step(shuffled, n, ws, torch.empty(n, cfg.hidden_size)), full[perm])
    few = torch.zeros_like(x)
    few[:3] = x[:3]
    assert torch.equal(moe.step(few, 3, ws, torch.empty(3, cfg.hidden_size)), full[:3])


@pytest.mark.parametrize("layout", ["contiguous", "transposed view"])
def test_a_row_of_linear_does_not_depend_on_the_row_count(layout):
    """`kernels.matmul.linear` on the invariant path: each padded row count gives the same rows,
    for a weight stored [N, K] and for a transposed view of a [K, N] matrix (as the vocoder's
    `basis.t()`); the one-GEMM check ran on that layout; the tiles (its fallback) agree."""
    from foreground.kernels import matmul

    gen = torch.Generator().manual_seed(11)
    k, n = 96, 80
    weight = torch.randn(n, k, generator=gen) if layout == "contiguous" else torch.randn(k, n, generator=gen).t()
    x = torch.randn(256, k, generator=gen)
    full = matmul.linear(x, weight, torch.empty(256, n))
    for rows in (64, 96, 160):
        assert torch.equal(matmul.linear(x[:rows], weight, torch.empty(rows, n)), full[:rows])
    key = (k, n, torch.float32, torch.get_num_threads(), weight.stride())
    assert key in matmul._one_gemm
    matmul._one_gemm[key] = False  # as if this BLAS's one GEMM were not row-invariant: tiles
    try:
        for rows in (64, 96, 256):
            assert torch.equal(matmul.linear(x[:rows], weight, torch.empty(rows, n)), full[:rows])
    finally:
        del matmul._one_gemm[key]
