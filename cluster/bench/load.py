"""`microturn bench load`: many concurrent sessions over real gRPC, opened through Serve.

Each client opens its session with the routed `OpenSession` call (Serve picks the replica),
then streams 200 ms chunks at real-time pace, straight to the replica's port (`--via direct`,
the designed path) or through the gateway (`--via gateway`). Every AudioOut says which chunk
its tick used and when (replica clock = client clock: one machine), so

    chunk overhead = (audio received - chunk sent) - (tick ended - chunk received by replica)
                   = inbound transport + outbound transport and delivery,

i.e. client -> model -> client minus the wait for the tick boundary and the model step.

Meanwhile a synthetic background result is published to every session's event stream every
2 s, as a pool worker would; `bg_result_to_tick_ms` is result published -> the tick that took
its first tokens started (from the replica's `Woven` messages), `bg_result_bus_ms` the part of
it before the replica read the result. Results start once the audio flows (the replica holds a
result while it hears the user start to speak, which is policy, not delivery: the clients' tone
onset reads as speech for a tick or two) and at a random phase per session, as independent
workers finish at any point of a tick. Waiting for the next boundary is uniform over one tick,
so p99 can be at most ~2 ms above 198 ms for the target (one tick) to hold.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import math
import time
from dataclasses import dataclass, field

import numpy as np

from foreground.engine.percentiles import percentile
from cluster.client import ClientSession, InteractionClient
from cluster.config import MicroturnConfig
from cluster.local_api_key import find_api_key
from cluster.runtime import LocalCluster
from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

CHUNK_S = 0.2
RESULT_EVERY_S = 2.0
RESULTS_AFTER_S = 1.0  # after the audio starts


@dataclass
class LoadTally:
    overhead_ms: list[float] = field(default_factory=list)
    inbound_ms: list[float] = field(default_factory=list)  # client send -> replica receipt
    outbound_ms: list[float] = field(default_factory=list)  # tick end -> client receipt
    round_trip_ms: list[float] = field(default_factory=list)
    audio_chunks: int = 0
    chunks_sent: int = 0
    late_chunks: int = 0  # waited more than one tick for their tick, or never used
    errors: list[str] = field(default_factory=list)
    woven_ms: list[float] = field(default_factory=list)  # background result published -> woven
    bus_ms: list[float] = field(default_factory=list)  # ... published -> read by the replica
    results_published: int = 0


def _voice_chunk(i: int) -> bytes:
    t = np.arange(3200) / 16_000
    wave = 0.2 * np.sin(2 * math.pi * (120 + 7 * i) * t)
    return (wave * 32767).astype("<i2").tobytes()


async def _one_session(client: InteractionClient, i: int, seconds: float, direct: bool, tally: LoadTally,
                       start_at: float, guard_s: float, result_phase_s: float, bus: EventBus | None) -> None:
    chunk = _voice_chunk(i)
    try:
        async with client.session(direct=direct) as session:
            receiver = asyncio.create_task(_receive(session, tally))
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            results = None
            if bus:
                first_at = start_at + RESULTS_AFTER_S + result_phase_s
                results = asyncio.create_task(_publish_results(bus, session.opened.session_id, first_at,
                                                               seconds - RESULTS_AFTER_S - result_phase_s, tally))
            t0 = session.chunk_clock(guard_s=guard_s, period_s=CHUNK_S)
            chunks = int(seconds / CHUNK_S)
            for seq in range(1, chunks + 1):
                await asyncio.sleep(max(0.0, t0 + seq * CHUNK_S - time.monotonic()))
                await session.send_audio(chunk, seq=seq)
            await asyncio.sleep(0.6)  # let the last chunks come back
            await session.close("bench done")
            await asyncio.wait_for(receiver, timeout=10)
            if results:
                results.cancel()
    except Exception as e:  # counted, not raised: one failing client must not hide the rest
        tally.errors.append(f"session {i}: {type(e).__name__}: {e}")


async def _publish_results(bus: EventBus, session_id: str, first_at: float, seconds: float,
                           tally: LoadTally) -> None:
    """A background result for the session every RESULT_EVERY_S, as a worker would publish it."""
    for k in range(max(0, math.ceil(seconds / RESULT_EVERY_S))):
        await asyncio.sleep(max(0.0, first_at + k * RESULT_EVERY_S - time.monotonic()))
        event = events_pb2.Event(
            session_id=session_id, event_id=f"bench-{k}", job_id=f"bench-job-{k}",
            created_unix_ms=round(time.time_ns() / 1e6),  # rounded, not truncated: unbiased
            tool_result=events_pb2.ToolResult(job_id=f"bench-job-{k}", tool="clock", result_json='{"t": 1}'))
        await bus.publish(event)
        tally.results_published += 1


async def _receive(session: ClientSession, tally: LoadTally) -> None:
    used: set[int] = set()
    async for received_ns, message in session.messages():
        kind = message.WhichOneof("payload")
        if kind == "audio":
            tally.audio_chunks += 1
            timing = message.audio.timing
            sent = session.sent_ns.get(timing.input_seq)
            if timing.input_seq and sent:
                total = received_ns - sent
                model = timing.tick_ended_unix_ns - timing.input_received_unix_ns
                tally.round_trip_ms.append(total / 1e6)
                tally.overhead_ms.append((total - model) / 1e6)
                tally.inbound_ms.append((timing.input_received_unix_ns - sent) / 1e6)
                tally.outbound_ms.append((received_ns - timing.tick_ended_unix_ns) / 1e6)
                used.add(timing.input_seq)
                if timing.tick_started_unix_ns - timing.input_received_unix_ns > CHUNK_S * 1e9:
                    tally.late_chunks += 1
        elif kind == "woven":
            tally.woven_ms.append((message.woven.woven_unix_ns - message.woven.published_unix_ns) / 1e6)
            tally.bus_ms.append((message.woven.received_unix_ns - message.woven.published_unix_ns) / 1e6)
        elif kind == "error":
            tally.errors.append(f"{message.error.code}: {message.error.message}")
        elif kind == "closed":
            break
    tally.chunks_sent += len(session.sent_ns)
    tally.late_chunks += len(set(session.sent_ns) - used)


async def run_load(config: MicroturnConfig, sessions: int, seconds: float, via: str = "direct",
                   address: str | None = None) -> dict:
    sys.setswitchinterval(0.0005)  # this process also hosts Ray's driver threads: see deployment.py
    async with _cluster_or_address(config, address) as (gateway, cluster):
        tally = LoadTally()
        redis_url = cluster.endpoints.redis_url if cluster else config.redis.url
        bus = EventBus.from_url(redis_url) if redis_url else None
        api_key = cluster.api_key if cluster else find_api_key(config.auth.key_file)
        async with InteractionClient(gateway, api_key) as client:
            # Every client cuts its chunks to arrive a little before the replica's tick
            # (`ClientSession.chunk_clock`), as the SDK does for a live microphone; how much
            # before differs per client (20-80 ms), as their networks would.
            start_at = time.monotonic() + 1.0
            rng = np.random.default_rng(0)
            guards = rng.uniform(0.02, 0.08, sessions)
            result_phases = rng.uniform(0.0, RESULT_EVERY_S, sessions)
            log.info("%d sessions streaming for %.0f s (%s)", sessions, seconds, via)
            await asyncio.gather(*(_one_session(client, i, seconds, via == "direct", tally, start_at, guards[i],
                                                result_phases[i], bus)
                                   for i in range(sessions)))
        if bus:
            await bus.close()
        replica = await cluster.foreground.describe.remote() if cluster else {}
    return {
        "bench": "load",
        "sessions": sessions,
        "seconds": seconds,
        "via": via,
        "chunks_measured": len(tally.overhead_ms),
        "chunk_overhead_ms_p50": round(percentile(tally.overhead_ms, 50), 3),
        "chunk_overhead_ms_p99": round(percentile(tally.overhead_ms, 99), 3),
        "inbound_ms_p50": round(percentile(tally.inbound_ms, 50), 3),
        "inbound_ms_p99": round(percentile(tally.inbound_ms, 99), 3),
        "outbound_ms_p50": round(percentile(tally.outbound_ms, 50), 3),
        "outbound_ms_p99": round(percentile(tally.outbound_ms, 99), 3),
        "round_trip_ms_p50": round(percentile(tally.round_trip_ms, 50), 2),
        "round_trip_ms_p99": round(percentile(tally.round_trip_ms, 99), 2),
        "tick_ms_p50": replica.get("tick_ms_p50"),
        "tick_ms_p99": replica.get("tick_ms_p99"),
        "tick_start_lag_ms_p99": replica.get("tick_start_lag_ms_p99"),
        "replica_niceness": replica.get("niceness"),
        "overruns": replica.get("overruns"),
        "chunks_sent": tally.chunks_sent,
        "late_chunks": tally.late_chunks,
        "bg_results_published": tally.results_published,
        "bg_results_woven": len(tally.woven_ms),
        "bg_result_to_tick_ms_p50": round(percentile(tally.woven_ms, 50), 2) if tally.woven_ms else None,
        "bg_result_to_tick_ms_p99": round(percentile(tally.woven_ms, 99), 2) if tally.woven_ms else None,
        "bg_result_bus_ms_p99": round(percentile(tally.bus_ms, 99), 2) if tally.bus_ms else None,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:5],
    }


class _cluster_or_address:
    """An embedded cluster sized for the run, or a running one's gateway address."""

    def __init__(self, config: MicroturnConfig, address: str | None) -> None:
        self.config, self.address = config, address
        self.cluster: LocalCluster | None = None

    async def __aenter__(self):
        if self.address:
            return self.address, None
        self.cluster = LocalCluster(self.config)
        await self.cluster.__aenter__()
        return self.cluster.endpoints.gateway, self.cluster

    async def __aexit__(self, *exc) -> None:
        if self.cluster:
            await self.cluster.__aexit__(*exc)
