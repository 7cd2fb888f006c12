"""`bench load`'s OpenAI Realtime clients (`--via realtime`): each connects to the gateway's
`/v1/realtime` WebSocket with `Authorization: Bearer <key>`, sends `session.update`, then one
`input_audio_buffer.append` (base64 PCM16, 24 kHz mono, one 200 ms chunk) every 200 ms at
real-time pace, at a phase of its own: a Realtime client does not know the replica's ticks.

It asks for `?microturn_events=1&microturn_timing=1`: `microturn.session` names the session
(for its background results), `microturn.woven` carries the `Woven` timestamps, and every tick
comes with its timing (`cluster.realtime.bridge`), on the audio delta or as `microturn.tick`:
which append carried the chunk's last byte, when the bridge had it and its pacer sent it, when
the replica received it and ran the tick. The tally takes the bridge's wait for its pacer out of
the overhead, as it is the wait for the tick boundary that a gRPC client spends before sending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cluster.bench.load_pacing import DRAIN_S, send_paced, voice_chunk
from cluster.bench.load_results import start_results
from cluster.bench.load_share import LoadTarget, SessionPlan
from cluster.bench.load_tally import CHUNK_S, LoadTally
from protos.event_bus import EventBus

SAMPLE_RATE = 24_000
OPEN_TIMEOUT_S = 30.0
SESSION_UPDATE = {"type": "session.update", "event_id": "bench_update", "session": {
    "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}}}}}


async def run_realtime_sessions(target: LoadTarget, plans: list[SessionPlan], start_at: float, tally: LoadTally,
                                bus: EventBus | None) -> None:
    if not target.realtime_url:
        raise ValueError("--via realtime needs the gateway's realtime URL (serve.realtime is off?)")
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    url = target.realtime_url.replace("http", "ws", 1).rstrip("/") + \
        "/v1/realtime?model=microturn&microturn_events=1&microturn_timing=1"
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(_RealtimeClient(plan, tally).run(http, url, target, start_at, bus) for plan in plans))


@dataclass
class _RealtimeClient:
    plan: SessionPlan
    tally: LoadTally
    sent_ns: dict[str, int] = field(default_factory=dict)  # append event_id -> when it was sent
    used: set[str] = field(default_factory=set)  # appends some tick used
    closing: bool = False

    async def run(self, http: aiohttp.ClientSession, url: str, target: LoadTarget, start_at: float,
                  bus: EventBus | None) -> None:
        try:
            # Offers permessage-deflate, as browsers and the OpenAI SDK do (the server declines it).
            async with http.ws_connect(url, max_msg_size=4 << 20, compress=15) as ws:
                opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                receiver = asyncio.create_task(self._receive(ws, opened))
                try:
                    await ws.send_json(SESSION_UPDATE)
                    session_id = await asyncio.wait_for(opened, OPEN_TIMEOUT_S)
                    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
                    results = start_results(bus, session_id, self.plan, start_at, target.seconds, self.tally)
                    audio = base64.b64encode(voice_chunk(self.plan.index, SAMPLE_RATE)).decode()
                    await send_paced(start_at + self.plan.phase_s - CHUNK_S, target.seconds,
                                     lambda seq: self._append(ws, seq, audio))
                    await asyncio.sleep(DRAIN_S + CHUNK_S)  # + the bridge's wait for its pacer
                    if results:
                        results.cancel()
                    self.closing = True
                    await ws.close()
                    await asyncio.wait_for(receiver, timeout=10)
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
        except Exception as e:  # counted, not raised: one failing client must not hide the rest
            self.tally.errors.append(f"session {self.plan.index}: {type(e).__name__}: {e}")
        self.tally.chunks_sent += len(self.sent_ns)
        self.tally.late_chunks += len(set(self.sent_ns) - self.used)

    async def _append(self, ws: aiohttp.ClientWebSocketResponse, seq: int, audio: str) -> None:
        event_id = f"bench_append_{seq}"
        self.sent_ns[event_id] = time.time_ns()
        await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "event_id": event_id, "audio": audio}))

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, opened: asyncio.Future[str]) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                self._on_event(time.time_ns(), event, opened)
            if not self.closing:
                self.tally.errors.append(f"session {self.plan.index}: the server closed the WebSocket "
                                         f"({ws.close_code}: {ws.extra})")
        finally:
            if not opened.done():
                opened.set_exception(ConnectionError("the WebSocket closed before the session opened"))

    def _on_event(self, received_ns: int, event: dict[str, Any], opened: asyncio.Future[str]) -> None:
        kind = event.get("type")
        timing = None
        if kind == "response.output_audio.delta":
            self.tally.audio_deltas += 1
            timing = event.get("microturn_timing")
        elif kind == "microturn.tick":
            timing = event
        elif kind == "microturn.session" and not opened.done():
            opened.set_result(event["session_id"])
        elif kind == "microturn.woven":
            self.tally.add_woven(event["published_unix_ns"], event["received_unix_ns"], event["woven_unix_ns"])
        elif kind == "error":
            error = event.get("error", {})
            self.tally.errors.append(f"{error.get('code')}: {error.get('message')}")
        if timing is not None:
            self.tally.audio_chunks += 1
            self._measure(received_ns, timing)

    def _measure(self, received_ns: int, t: dict[str, Any]) -> None:
        event_id = t.get("input_event_id")
        sent = self.sent_ns.get(event_id)
        if not (sent and t.get("chunk_sent_unix_ns") and t.get("chunk_received_unix_ns")):
            return  # silence the pacer sent for us, or a chunk of an append we did not send
        bridge_wait = t["chunk_sent_unix_ns"] - t["append_received_unix_ns"]
        self.tally.add_chunk(sent, received_ns, t["chunk_received_unix_ns"], t["tick_started_unix_ns"],
                             t["tick_ended_unix_ns"], bridge_wait_ns=bridge_wait)
        if t.get("bridge_received_unix_ns"):
            self.tally.add_hops(sent, t["append_received_unix_ns"], t["chunk_sent_unix_ns"],
                                t["chunk_received_unix_ns"], t["tick_ended_unix_ns"], t["bridge_received_unix_ns"],
                                received_ns)
        self.used.add(event_id)
