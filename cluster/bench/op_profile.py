"""Where a tick's time goes, op by op: `torch.profiler`'s self CPU time of each op, per tick
(and of each region a library annotates, such as vLLM's `execute_context_*` steps: their own
time is the Python between their ops).

`bench compare` takes one on each side over the same few ticks after the timed ones, vLLM's in
the process where its model runs, so that the two sides' time can be read op against op: which
share is matrix products, which is attention, which is everything else. The profiler slows small
ops a little, so these ticks are not among the timed ones; the split is what it is for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from torch.profiler import ProfilerActivity, profile

from cluster.bench.gemm_replay import MATMUL_OPS

TOP_OPS = 12
# Matrix products as each side calls them: ATen's (the ones `gemm_replay` records) and vLLM's
# CPU linear layers (oneDNN). vLLM's fused MoE and attention kernels run their products inside
# one op with the rest of the block, so they are listed apart, never counted here.
PRODUCT_OPS = frozenset({op.default.name() for op in MATMUL_OPS} | {"_C::onednn_mm"})


@dataclass(frozen=True)
class OpTime:
    op: str
    calls_per_tick: float
    self_ms_per_tick: float
    share: float  # of every op's self time


@dataclass(frozen=True)
class TickProfile:
    ticks: int
    wall_ms_per_tick: float  # the profiled ticks, profiler on (slower than the timed ones)
    ops_self_ms_per_tick: float  # every op's own time, summed
    products_self_ms_per_tick: float  # PRODUCT_OPS among them
    top_ops: list[OpTime]

    def to_json(self) -> dict:
        return asdict(self)


class OpProfiler:
    """start(); run `ticks` ticks; stop(ticks) -> TickProfile."""

    def __init__(self) -> None:
        self._profile: profile | None = None
        self._started = 0.0

    def start(self) -> None:
        self._profile = profile(activities=[ProfilerActivity.CPU])
        self._profile.start()
        self._started = time.perf_counter()

    def stop(self, ticks: int) -> TickProfile:
        if self._profile is None:
            raise RuntimeError("OpProfiler.stop() before start()")
        wall_ms = (time.perf_counter() - self._started) * 1000
        self._profile.stop()
        events, self._profile = self._profile.key_averages(), None
        return op_table(((e.key, e.count, e.self_cpu_time_total / 1000) for e in events), ticks, wall_ms)


def op_table(ops: Iterable[tuple[str, int, float]], ticks: int, wall_ms: float) -> TickProfile:
    """ops: (name, calls, self ms) over `ticks` ticks -> per tick, the TOP_OPS largest first."""
    ops = sorted(ops, key=lambda op: -op[2])
    total = sum(ms for _, _, ms in ops)
    products = sum(ms for name, _, ms in ops if name in PRODUCT_OPS)
    top = [OpTime(name, round(calls / ticks, 1), round(ms / ticks, 2), round(ms / total, 3) if total else 0.0)
           for name, calls, ms in ops[:TOP_OPS]]
    return TickProfile(ticks, round(wall_ms / ticks, 2), round(total / ticks, 2), round(products / ticks, 2), top)


def profile_ticks(run_ticks: Callable[[int], None], ticks: int) -> TickProfile:
    """Profile `run_ticks(ticks)` in this process."""
    profiler = OpProfiler()
    profiler.start()
    run_ticks(ticks)
    return profiler.stop(ticks)
