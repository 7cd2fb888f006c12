"""`microturn bench tick`: how many sessions one foreground replica carries in real time.

N sessions join one `TickScheduler`; every tick each session submits a tick's chunk (a
seeded mix of tones and noise at speech level, different per session) and the engine runs one
batched tick. Ticks run back to back (no sleeping) after warm-up, in three phases:

1. invariant kernels (the default), timed; each session's outputs are digested;
2. the same number of ticks again, taking turns tick by tick (PAIR_BLOCK) between the
   invariant kernels and fast ones (plain matmuls): `invariant_overhead_ratio` is the p50 of
   the first over the p50 of the second. Taking turns, both see the same seconds of a shared
   machine; run one phase after the other, drift between minutes moved the ratio by ±15%
   (0.87 and 1.19 in two runs here, for kernels that run the same GEMMs);
3. a few ticks under the allocation counter (it slows ops, so they are not timed).

Then every session is replayed alone through phase 1 (same chunks, same seed) and its digests
compared: `invariant` is true when all are bitwise equal. The floor (`flop_floor_ms`,
`floor_ratio`) and the per-stage table (`stages`) are `tick_floor`'s; `gemm_replay_ms` (one
tick's matrix products, each run alone at its own shape) is `gemm_replay`'s; `--find-max` is
`find_max_sessions`. RSS is compared between the end of
warm-up and the end of phase 1. Either model family: `--checkpoint` a Moshi-family folder and a
tick is one 80 ms frame (`tick_ms_*` are then per frame, `realtime` means p99 < 80 ms).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import psutil
import torch

from foreground.engine.percentiles import percentile
from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.family_loader import load_family
from foreground.kernels.matmul import use_invariant_kernels
from cluster.bench.gemm_replay import record_matmuls, replay
from cluster.bench.tick_floor import matmul_rate_gflops, stage_table, tick_flops

log = logging.getLogger(__name__)

WARMUP_TICKS = 5
COUNTED_TICKS = 3
PAIR_BLOCK = 1  # phase 2: ticks per turn of each kernel choice
STAGE_TICKS = 10
GEMM_RECORDED_TICKS = 5  # ticks whose matrix products are timed in place, then replayed alone


def synthetic_chunks(sessions: int, samples: int, seed: int) -> list[bytes]:
    """One speech-level chunk per session: two tones and noise, different per session."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16_000
    chunks = []
    for i in range(sessions):
        f0 = 110 + 15 * i
        wave = 0.2 * torch.sin(2 * math.pi * f0 * t) + 0.1 * torch.sin(2 * math.pi * 3 * f0 * t)
        wave += 0.02 * torch.randn(samples, generator=gen)
        chunks.append((wave.clamp(-1, 1) * 32767).to(torch.int16).numpy().tobytes())
    return chunks


class _Driver:
    """Feeds sessions their chunk each tick, times ticks, digests each session's outputs."""

    def __init__(self, engine: TickScheduler, names: list[str], chunks: list[bytes]) -> None:
        self.engine, self.names, self.chunks = engine, names, chunks

    def tick(self, digests: dict[str, list[str]] | None = None) -> float:
        for name, chunk in zip(self.names, self.chunks, strict=True):
            self.engine.submit_audio(name, chunk)
        start = time.perf_counter()
        outputs = self.engine.tick()
        elapsed = (time.perf_counter() - start) * 1000
        if digests is not None:
            for out in outputs:
                digests.setdefault(out.session_id, []).append(self._digest(out))
        return elapsed

    def _digest(self, out) -> str:
        e, slot = self.engine, self.engine.slots.get(out.session_id).slot
        h = hashlib.blake2b(out.pcm16, digest_size=16)
        for t in e.family.output_rows(slot):
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def _new_engine(checkpoint, preset: str, slots: int, policy: str) -> TickScheduler:
    return TickScheduler(load_family(checkpoint, preset), max_slots=slots, turn=TurnPolicyConfig(policy=policy))


def run_tick_bench(sessions: int, ticks: int, preset: str = "tiny", checkpoint=None,
                   turn_policy: str = "hybrid", check_invariance: bool = True) -> dict:
    engine = _new_engine(checkpoint, preset, sessions, turn_policy)
    names = [f"bench-{i}" for i in range(sessions)]
    for i, name in enumerate(names):
        engine.join(name, seed=i)
    chunks = synthetic_chunks(sessions, engine.shape.samples(16_000), seed=0)
    driver = _Driver(engine, names, chunks)

    digests: dict[str, list[str]] = {}
    use_invariant_kernels(True)
    for _ in range(WARMUP_TICKS):
        driver.tick(digests)
    process = psutil.Process()
    rss_start = process.memory_info().rss
    invariant_ms = []
    for k in range(ticks):
        invariant_ms.append(driver.tick(digests))
        if (k + 1) % max(1, ticks // 5) == 0:
            log.info("invariant tick %d/%d: %.1f ms", k + 1, ticks, invariant_ms[-1])
    rss_end = process.memory_info().rss

    paired_ms = _paired_kernel_ticks(driver, ticks)
    fast_ms = paired_ms[False]
    log.info("paired ticks done: invariant p50 %.1f ms, fast p50 %.1f ms",
             percentile(paired_ms[True], 50), percentile(fast_ms, 50))

    gflops = matmul_rate_gflops()
    flops = tick_flops(engine, sessions)
    floor_ms = sum(flops.values()) / gflops / 1e6
    stages = stage_table(driver.tick, STAGE_TICKS, flops, gflops)
    gemm = replay(record_matmuls(driver.tick, GEMM_RECORDED_TICKS))
    for stage, ms in gemm.replay_by_stage_ms.items():
        stages.setdefault(stage, {}).update(gemm_in_tick_ms=round(gemm.in_tick_by_stage_ms[stage], 2),
                                            gemm_replay_ms=round(ms, 2))
    log.info("the tick's %.0f products: %.1f ms in the tick, %.1f ms alone (floor %.1f ms)",
             gemm.calls, gemm.in_tick_ms, gemm.replay_ms, floor_ms)

    allocations, by_op = 0, {}
    for _ in range(COUNTED_TICKS):
        with count_tensor_allocations() as report:
            driver.tick()
        allocations += report.count
        for op, n in report.by_op.items():
            by_op[op] = by_op.get(op, 0) + n

    invariant = _replay_alone(checkpoint, preset, names, chunks, digests, WARMUP_TICKS + ticks, turn_policy) \
        if check_invariance else None
    p99 = percentile(invariant_ms, 99)
    return {
        "bench": "tick",
        "family": engine.shape.name,
        "preset": preset if checkpoint is None else str(checkpoint),
        "tick_budget_ms": engine.shape.tick_ms,
        "sessions": sessions,
        "ticks": ticks,
        "threads": torch.get_num_threads(),
        "tick_ms_p50": round(percentile(invariant_ms, 50), 2),
        "tick_ms_p99": round(p99, 2),
        "tick_ms_max": round(max(invariant_ms), 2),
        "realtime": p99 < engine.shape.tick_ms,
        "fast_tick_ms_p50": round(percentile(fast_ms, 50), 2),
        "fast_tick_ms_p99": round(percentile(fast_ms, 99), 2),
        "paired_invariant_tick_ms_p50": round(percentile(paired_ms[True], 50), 2),
        "invariant_overhead_ratio": round(percentile(paired_ms[True], 50) / percentile(fast_ms, 50), 3),
        "matmul_gflops": round(gflops, 1),
        "tick_gflop": round(sum(flops.values()) / 1e9, 3),
        "flop_floor_ms": round(floor_ms, 2),
        "floor_ratio": round(percentile(invariant_ms, 50) / floor_ms, 3),
        "gemm_calls_per_tick": round(gemm.calls, 1),
        "gemm_gflop": round(gemm.gflop, 3),
        "gemm_in_tick_ms": round(gemm.in_tick_ms, 2),
        "gemm_replay_ms": round(gemm.replay_ms, 2),
        "gemm_replay_matmul_gflops": round(gemm.matmul_gflops, 1),
        # the products alone over the floor, both at the rate timed in turns with them
        "gemm_replay_floor_ratio": round(gemm.replay_ms * gemm.matmul_gflops * 1e6 / sum(flops.values()), 3),
        "tick_over_gemm_replay_ratio": round(percentile(invariant_ms, 50) / gemm.replay_ms, 3),
        "stages": stages,
        "invariant": invariant,
        "hot_path_allocations": allocations,
        "hot_path_allocations_by_op": by_op,
        "allocation_ticks_counted": COUNTED_TICKS,
        "rss_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 3),
        "late_chunks": sum(r.late_chunks for r in engine.slots.records()),
    }


def _paired_kernel_ticks(driver: _Driver, ticks: int) -> dict[bool, list[float]]:
    """`ticks` timed ticks of each kernel choice, taking turns every PAIR_BLOCK ticks
    (invariant first); the invariant kernels are on again when it returns."""
    ms: dict[bool, list[float]] = {True: [], False: []}
    try:
        while len(ms[False]) < ticks:
            for invariant in (True, False):
                use_invariant_kernels(invariant)
                block = min(PAIR_BLOCK, ticks - len(ms[invariant]))
                ms[invariant].extend(driver.tick() for _ in range(block))
    finally:
        use_invariant_kernels(True)
    return ms


def find_max_sessions(ticks: int = 20, preset: str = "tiny", checkpoint=None, turn_policy: str = "hybrid",
                      limit: int = 1024) -> dict:
    """The most sessions whose tick p99 stays under one tick (doubling, then bisection)."""
    def realtime(n: int) -> bool:
        engine = _new_engine(checkpoint, preset, n, turn_policy)
        names = [f"probe-{i}" for i in range(n)]
        for i, name in enumerate(names):
            engine.join(name, seed=i)
        driver = _Driver(engine, names, synthetic_chunks(n, engine.shape.samples(16_000), seed=0))
        for _ in range(WARMUP_TICKS):
            driver.tick()
        p99 = percentile([driver.tick() for _ in range(ticks)], 99)
        log.info("find-max: %d sessions: tick p99 %.1f ms (budget %d ms)", n, p99, engine.shape.tick_ms)
        probes[n] = round(p99, 2)
        return p99 < engine.shape.tick_ms

    probes: dict[int, float] = {}
    good, n = 0, 1
    while n <= limit and realtime(n):
        good, n = n, n * 2
    bad = n if n <= limit else None  # the first count found too slow (None: all up to `limit` kept up)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if realtime(mid) else (good, mid)
    return {"bench": "tick", "find_max": True, "max_realtime_sessions": good, "ticks_per_probe": ticks,
            "threads": torch.get_num_threads(), "probe_tick_ms_p99": {str(k): v for k, v in sorted(probes.items())}}


def _replay_alone(checkpoint, preset, names, chunks, digests, ticks: int, policy: str) -> bool:
    """Each session alone (one slot of a fresh-state engine), same chunks: same digests?"""
    solo = _new_engine(checkpoint, preset, 1, policy)
    for i, (name, chunk) in enumerate(zip(names, chunks, strict=True)):
        solo.join(name, seed=i)
        alone: dict[str, list[str]] = {}
        driver = _Driver(solo, [name], [chunk])
        for _ in range(ticks):
            driver.tick(alone)
        solo.leave(name)
        if alone[name] != digests[name][:ticks]:
            log.warning("session %s: outputs alone differ from its batched outputs", name)
            return False
    log.info("all %d sessions: batched outputs bitwise equal to solo runs", len(names))
    return True
