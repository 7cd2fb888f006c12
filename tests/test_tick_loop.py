"""Wall-clock aligned ticks, and the overrun policy: count missed boundaries, never catch up."""

import asyncio
import time

import pytest

from foreground.engine.tick_loop import TickLoop
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))
    engine = TickScheduler(ReferenceFamily(model), max_slots=2, turn=TurnPolicyConfig())
    engine.join("s")
    return engine


def test_ticks_start_on_the_wall_clock_grid(engine):
    delivered = []
    loop = TickLoop(engine, period_ms=100, deliver=delivered.append)
    began = time.monotonic()
    stats = asyncio.run(loop.run(max_ticks=8))
    elapsed = time.monotonic() - began
    assert stats.overruns == 0 and len(delivered) == 8
    assert 0.7 <= elapsed <= 0.7 + 0.2  # 8 ticks on a 100 ms grid: the 8th starts at 700 ms
    assert max(stats.start_lag_ms) < 50
    assert all(len(outputs) == 1 and outputs[0].session_id == "s" for outputs in delivered)


def test_before_tick_runs_before_every_tick_and_a_slow_one_does_not_hold_the_tick(engine):
    calls, delivered = [], []
    loop = TickLoop(engine, period_ms=100, deliver=delivered.append)

    async def slow_before_tick():
        calls.append(engine.tick_count)
        await asyncio.sleep(1.0)  # far past its budget

    loop.before_tick = slow_before_tick
    first_tick = engine.tick_count
    stats = asyncio.run(loop.run(max_ticks=4))
    assert calls == [first_tick + k for k in range(4)]  # once before each tick, before it ran
    assert len(delivered) == 4 and stats.overruns == 0
    assert max(stats.start_lag_ms) < 50  # the tick went on after BEFORE_TICK_BUDGET_S


def test_overruns_are_counted_and_skipped_not_caught_up(engine):
    loop = TickLoop(engine, period_ms=2, deliver=lambda outputs: None)  # far shorter than a tick
    began = time.monotonic()
    stats = asyncio.run(loop.run(max_ticks=10))
    elapsed_ms = (time.monotonic() - began) * 1000
    assert stats.overruns > 0
    # Each tick starts on a boundary still ahead, so ticks + overruns ~ boundaries elapsed.
    assert stats.ticks + stats.overruns <= elapsed_ms / 2 + 2
    assert all(lag < 25 for lag in stats.start_lag_ms)  # started by its boundary, not queued behind


def test_stop_ends_the_loop_promptly(engine):
    async def main():
        loop = TickLoop(engine, period_ms=200, deliver=lambda outputs: None)
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.3)
        loop.stop()
        return await asyncio.wait_for(task, timeout=2)

    stats = asyncio.run(main())
    assert 1 <= stats.ticks <= 3
