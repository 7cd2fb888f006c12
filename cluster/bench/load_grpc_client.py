"""`bench load`'s gRPC clients (`--via direct|gateway`): each opens its session with the routed
`OpenSession` call (Serve picks the replica), then streams straight to the replica's port
(`direct`, the designed path) or through the gateway's relay (`gateway`). Every AudioOut says
which chunk its tick used and when, which is all the tally needs."""

from __future__ import annotations

import asyncio
import time

from cluster.bench.load_pacing import DRAIN_S, send_paced, voice_chunk
from cluster.bench.load_results import start_results
from cluster.bench.load_share import LoadTarget, SessionPlan
from cluster.bench.load_tally import CHUNK_S, LoadTally
from cluster.client import ClientSession, InteractionClient
from protos.event_bus import EventBus

SAMPLE_RATE = 16_000


async def run_grpc_sessions(target: LoadTarget, plans: list[SessionPlan], start_at: float, tally: LoadTally,
                            bus: EventBus | None) -> None:
    async with InteractionClient(target.gateway, target.api_key) as client:
        await asyncio.gather(*(_one_session(client, target, plan, start_at, tally, bus) for plan in plans))


async def _one_session(client: InteractionClient, target: LoadTarget, plan: SessionPlan, start_at: float,
                       tally: LoadTally, bus: EventBus | None) -> None:
    chunk = voice_chunk(plan.index, SAMPLE_RATE)
    try:
        async with client.session(direct=target.via == "direct") as session:
            receiver = asyncio.create_task(_receive(session, tally))
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            results = start_results(bus, session.opened.session_id, plan, start_at, target.seconds, tally)
            t0 = session.chunk_clock(guard_s=plan.guard_s, period_s=CHUNK_S)
            await send_paced(t0, target.seconds, lambda seq: session.send_audio(chunk, seq=seq))
            await asyncio.sleep(DRAIN_S)
            await session.close("bench done")
            await asyncio.wait_for(receiver, timeout=10)
            if results:
                results.cancel()
    except Exception as e:  # counted, not raised: one failing client must not hide the rest
        tally.errors.append(f"session {plan.index}: {type(e).__name__}: {e}")


async def _receive(session: ClientSession, tally: LoadTally) -> None:
    used: set[int] = set()
    async for received_ns, message in session.messages():
        kind = message.WhichOneof("payload")
        if kind == "audio":
            tally.audio_chunks += 1
            timing = message.audio.timing
            sent = session.sent_ns.get(timing.input_seq)
            if timing.input_seq and sent:
                tally.add_chunk(sent, received_ns, timing.input_received_unix_ns, timing.tick_started_unix_ns,
                                timing.tick_ended_unix_ns)
                used.add(timing.input_seq)
        elif kind == "woven":
            w = message.woven
            tally.add_woven(w.published_unix_ns, w.received_unix_ns, w.woven_unix_ns)
        elif kind == "error":
            tally.errors.append(f"{message.error.code}: {message.error.message}")
        elif kind == "closed":
            break
    tally.chunks_sent += len(session.sent_ns)
    tally.late_chunks += len(set(session.sent_ns) - used)
