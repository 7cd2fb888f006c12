"""Wall-clock aligned ticks: the engine never waits for slow clients, and never catches up.

Tick k starts at `start + k * period`. The tick itself runs in a worker thread (torch
releases the GIL), so the event loop keeps receiving chunks meanwhile. A session whose chunk
has not arrived by the boundary gets silence (`late_chunks`).

Just before each tick, `before_tick` (if set) may bring in what arrived meanwhile (the session
host pulls published background results, so they make this tick); it gets a small time budget
and the tick starts when it is spent, whatever it did.

Overrun policy: when a tick ends after the next boundary, that boundary is missed (counted in
`overruns`) and the loop waits for the first boundary still ahead. Ticks are never run back to
back to catch up: clients stream in real time, so a burst of catch-up ticks would only empty
the jitter buffers and play late audio faster than real time; skipping keeps output aligned
with the clock, and each client's jitter buffer (a few chunks) absorbs the missed boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from foreground.engine.tick_scheduler import SessionOutput, TickScheduler

log = logging.getLogger(__name__)

BEFORE_TICK_BUDGET_S = 0.01


@dataclass
class TickLoopStats:
    ticks: int = 0
    overruns: int = 0
    tick_ms: list[float] = field(default_factory=list)  # recent tick durations
    start_lag_ms: list[float] = field(default_factory=list)  # recent start - boundary

    def record(self, duration_ms: float, lag_ms: float) -> None:
        self.ticks += 1
        self.tick_ms.append(duration_ms)
        self.start_lag_ms.append(lag_ms)
        del self.tick_ms[:-1000], self.start_lag_ms[:-1000]


class TickLoop:
    def __init__(self, engine: TickScheduler, period_ms: float,
                 deliver: Callable[[list[SessionOutput]], Awaitable[None] | None]) -> None:
        self.engine, self.period = engine, period_ms / 1000.0
        self.deliver = deliver
        self.before_tick: Callable[[], Awaitable[None]] | None = None
        self.stats = TickLoopStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tick")
        self._stopping = asyncio.Event()
        self._start_wall_ns: int | None = None

    def stop(self) -> None:
        self._stopping.set()

    def next_boundary_ns(self) -> int:
        """Wall-clock time of the next tick boundary (0 before the loop runs)."""
        if self._start_wall_ns is None:
            return 0
        period_ns = int(self.period * 1e9)
        elapsed = time.time_ns() - self._start_wall_ns
        return self._start_wall_ns + (elapsed // period_ns + 1) * period_ns

    async def between_ticks(self, fn, *args):
        """Run fn(*args) on the tick thread, so it never overlaps a tick (joins, leaves)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self, max_ticks: int | None = None) -> TickLoopStats:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self._start_wall_ns = time.time_ns()
        boundary = 0
        try:
            while not self._stopping.is_set() and (max_ticks is None or self.stats.ticks < max_ticks):
                await self._sleep_until(start + boundary * self.period)
                if self._stopping.is_set():
                    break
                if self.before_tick is not None:
                    await self._run_before_tick()
                began = time.monotonic()
                outputs = await loop.run_in_executor(self._executor, self.engine.tick)
                ended = time.monotonic()
                self.stats.record((ended - began) * 1000, (began - start - boundary * self.period) * 1000)
                result = self.deliver(outputs)
                if asyncio.iscoroutine(result):
                    await result
                next_boundary = boundary + 1
                ahead = int((time.monotonic() - start) // self.period) + 1
                if ahead > next_boundary:
                    self.stats.overruns += ahead - next_boundary
                    log.warning("tick %d took %.0f ms: %d boundary(ies) missed", boundary,
                                (ended - began) * 1000, ahead - next_boundary)
                boundary = max(next_boundary, ahead)
        finally:
            self._executor.shutdown(wait=True)
        return self.stats

    async def _run_before_tick(self) -> None:
        try:
            await asyncio.wait_for(self.before_tick(), timeout=BEFORE_TICK_BUDGET_S)
        except TimeoutError:
            log.debug("before_tick took over %.0f ms; ticking without waiting for it", BEFORE_TICK_BUDGET_S * 1000)
        except Exception:
            log.exception("before_tick failed; ticking anyway")

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass
