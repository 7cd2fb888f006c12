"""The tick's floor: its FLOPs at this machine's matmul rate, and where the time over it goes.

`matmul_rate_gflops` times a large fp32 matmul (1024 x 1024 x 1024, `torch.mm`) on the threads
the bench uses, in the same process and run as the ticks, and takes the median of its timed
repetitions: the rate at which this machine multiplies when nothing else gets in the way. The
floor is the tick's FLOPs (counted from the model config and the live batch by the family and
the VAD, see `foreground.model.tick_flops`) at that rate; `floor_ratio` = tick p50 / floor.

The stage table runs ticks with `foreground.engine.stage_clock.STAGES` on and lists, per stage,
the wall time and that stage's own floor, so the gap shows where it is.
"""

from __future__ import annotations

import statistics
import time

import torch

from foreground.engine.stage_clock import STAGES
from foreground.engine.tick_scheduler import TickScheduler

RATE_SIZE = 1024
RATE_REPEATS = 15


def matmul_rate_gflops(size: int = RATE_SIZE, repeats: int = RATE_REPEATS) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), repeats, warmups=3)
    return 2 * size**3 / seconds / 1e9


def median_seconds(run, repeats: int, warmups: int = 1) -> float:
    """The median wall time of `repeats` back-to-back calls of `run()`, after `warmups` untimed."""
    for _ in range(warmups):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tick_flops(engine: TickScheduler, batch: int) -> dict[str, int]:
    """Per stage, the matmul FLOPs of one tick for `batch` sessions: the VAD's and the model's."""
    return {"engine.vad": engine.vad.tick_flops(batch), **engine.family.tick_flops(batch)}


def stage_table(run_tick, ticks: int, flops: dict[str, int], gflops: float) -> dict[str, dict[str, float]]:
    """Run `ticks` ticks with the stage clock on: per stage, mean wall ms and floor ms per tick."""
    STAGES.reset(enabled=True)
    try:
        for _ in range(ticks):
            run_tick()
        measured = STAGES.per_tick_ms()
    finally:
        STAGES.reset(enabled=False)
    return {stage: {"ms": round(ms, 2), "floor_ms": round(flops.get(stage, 0) / gflops / 1e6, 2)}
            for stage, ms in measured.items()}
