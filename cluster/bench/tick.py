"""`microturn bench tick`: how many sessions one foreground replica carries in real time.

N sessions join one `TickScheduler`; every tick each session submits a 200 ms chunk (a
seeded mix of tones and noise at speech level) and the engine runs one batched tick. Ticks are
timed back to back (no sleeping), after warm-up. Then a few more ticks run under the
allocation counter (it slows ops down, so they are not timed), and RSS is compared between
the end of warm-up and the end of the run.
"""

from __future__ import annotations

import logging
import math
import time

import psutil
import torch

from cluster.bench.stats import percentile
from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import ensure_seeded_checkpoint, load_checkpoint

log = logging.getLogger(__name__)

WARMUP_TICKS = 5
COUNTED_TICKS = 3


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


def run_tick_bench(sessions: int, ticks: int, preset: str = "tiny", checkpoint=None,
                   turn_policy: str = "hybrid") -> dict:
    model = load_checkpoint(checkpoint or ensure_seeded_checkpoint(preset))
    engine = TickScheduler(model, max_slots=sessions, turn=TurnPolicyConfig(policy=turn_policy))
    for i in range(sessions):
        engine.join(f"bench-{i}", seed=i)
    chunks = synthetic_chunks(sessions, model.cfg.audio.input_samples_per_tick, seed=0)

    def one_tick() -> float:
        for i, chunk in enumerate(chunks):
            engine.submit_audio(f"bench-{i}", chunk)
        start = time.perf_counter()
        engine.tick()
        return (time.perf_counter() - start) * 1000

    for _ in range(WARMUP_TICKS):
        one_tick()
    process = psutil.Process()
    rss_start = process.memory_info().rss
    durations = []
    for k in range(ticks):
        durations.append(one_tick())
        if (k + 1) % max(1, ticks // 5) == 0:
            log.info("tick %d/%d: %.1f ms", k + 1, ticks, durations[-1])
    rss_end = process.memory_info().rss
    allocations = 0
    by_op: dict[str, int] = {}
    for _ in range(COUNTED_TICKS):
        for i, chunk in enumerate(chunks):
            engine.submit_audio(f"bench-{i}", chunk)
        with count_tensor_allocations() as report:
            engine.tick()
        allocations += report.count
        for op, n in report.by_op.items():
            by_op[op] = by_op.get(op, 0) + n
    p99 = percentile(durations, 99)
    return {
        "bench": "tick",
        "preset": preset,
        "sessions": sessions,
        "ticks": ticks,
        "threads": torch.get_num_threads(),
        "tick_ms_p50": round(percentile(durations, 50), 2),
        "tick_ms_p99": round(p99, 2),
        "tick_ms_max": round(max(durations), 2),
        "realtime": p99 < model.cfg.audio.tick_ms,
        "hot_path_allocations": allocations,
        "hot_path_allocations_by_op": by_op,
        "allocation_ticks_counted": COUNTED_TICKS,
        "rss_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 3),
        "late_chunks": sum(r.late_chunks for r in engine.slots.records()),
    }
