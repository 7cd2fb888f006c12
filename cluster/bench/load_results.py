"""Synthetic background results for `bench load`: published to a session's event stream every
RESULT_EVERY_S, as a pool worker would, so that the replica's `Woven` messages measure result
published -> woven into a tick under load. They start once the audio flows (the replica holds a
result while it hears the user start to speak, which is policy, not delivery: the clients' tone
onset reads as speech for a tick or two)."""

from __future__ import annotations

import asyncio
import math
import time

from cluster.bench.load_share import RESULT_EVERY_S, SessionPlan
from cluster.bench.load_tally import LoadTally
from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2

RESULTS_AFTER_S = 1.0  # after the audio starts


def start_results(bus: EventBus | None, session_id: str, plan: SessionPlan, audio_starts_at: float,
                  seconds: float, tally: LoadTally) -> asyncio.Task | None:
    """The publisher for one session (None without a bus); cancel it when the session ends."""
    if bus is None:
        return None
    first_at = audio_starts_at + RESULTS_AFTER_S + plan.result_phase_s
    span = seconds - RESULTS_AFTER_S - plan.result_phase_s
    return asyncio.create_task(_publish(bus, session_id, first_at, span, tally))


async def _publish(bus: EventBus, session_id: str, first_at: float, seconds: float, tally: LoadTally) -> None:
    for k in range(max(0, math.ceil(seconds / RESULT_EVERY_S))):
        await asyncio.sleep(max(0.0, first_at + k * RESULT_EVERY_S - time.monotonic()))
        event = events_pb2.Event(
            session_id=session_id, event_id=f"bench-{k}", job_id=f"bench-job-{k}",
            created_unix_ms=round(time.time_ns() / 1e6),  # rounded, not truncated: unbiased
            tool_result=events_pb2.ToolResult(job_id=f"bench-job-{k}", tool="clock", result_json='{"t": 1}'))
        await bus.publish(event)
        tally.results_published += 1
