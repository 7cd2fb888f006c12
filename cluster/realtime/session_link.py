"""The bridge's link to its microturn session (`Interaction.Converse`), and why the link ends.

The session opens once, with the settings known by then (the bridge opens it at the client's
first event, or `bridge.OPEN_AFTER_S` after connecting). Then two tasks run:
- the pump reads the replica's messages and hands each to the bridge; a failed stream is told
  to the client as an `error`, and the connection ends;
- the pacer sends one chunk of `SessionOpened.tick_ms` of the client's audio every tick, on the
  wall clock, aligned with the replica's ticks (`ClientSession.chunk_clock`), silence when the
  client's audio has not arrived; after a stall it starts its clock again rather than burst.
  Each link sends at a guard of its own before the boundary (`PACER_GUARD_S`), so that the
  bridge's sessions do not all send in the same millisecond and queue behind each other in
  this process and the replica.

With `timing` (`?microturn_timing=1`: what `microturn bench load --via realtime` asks for), the
link remembers which client event carried each chunk's last byte, so that every tick's timing
can go out (`tick_timing`) and a client can take the serving overhead apart as a gRPC client
does with `AudioOut.timing`: which client event carried the chunk's last byte and when the
bridge had it, when the pacer sent the chunk, and when the replica received it and ran the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cluster.realtime.audio import PCM_RATE, AudioSource, InputBuffer
from cluster.realtime.outbox import Outbox
from cluster.realtime.protocol import ProtocolError, error_event
from cluster.realtime.session_config import RealtimeSession
from protos.microturn.v1 import interaction_pb2 as pb

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 2.0  # for the replica's `closed` after the client left
CATCH_UP_TICKS = 4  # the pacer sends missed chunks up to this many at once, else restarts its clock
SOURCES_KEPT = 64  # chunks whose source the link remembers for `timing` (a tick uses a recent one)
PACER_GUARD_S = (0.015, 0.045)  # how long before the replica's tick a link sends its chunk: drawn per link

OnMessage = Callable[[pb.ServerMessage], Awaitable[None]]


class BridgeClosed(Exception):
    """The microturn session could not be opened or has ended; the WebSocket closes."""

    def __init__(self, reason: str, code: int = 1000) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


class SessionLink:
    def __init__(self, session: RealtimeSession, connect: Callable[..., Any], out: Outbox,
                 on_message: OnMessage, timing: bool = False) -> None:
        self.session = session
        self._connect = connect  # (**SessionOpen fields) -> async context manager of a ClientSession
        self._out = out
        self._on_message = on_message
        self.timing = timing
        self.buffer = InputBuffer(PCM_RATE // 5)  # 200 ms until SessionOpened says otherwise
        self.upstream = None  # cluster.client.ClientSession, once open
        self.tick_ms = 200
        self.guard_s = random.uniform(*PACER_GUARD_S)
        self.chunk_sources: dict[int, AudioSource] = {}  # pacer seq -> its source (with `timing`)
        self.ended: asyncio.Future[BridgeClosed] = asyncio.get_running_loop().create_future()
        self._stack = contextlib.AsyncExitStack()
        self._open_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []  # the pump, then the pacer

    def end(self, reason: str, code: int = 1000) -> None:
        """The connection ends (the first reason given is the one the client hears)."""
        if not self.ended.done():
            self.ended.set_result(BridgeClosed(reason, code))

    async def ensure_open(self) -> None:
        """Open the microturn session (once) with the settings known now."""
        async with self._open_lock:
            if self.upstream is not None:
                return
            if self.ended.done():
                raise self.ended.result()
            fields = {"input_sample_rate": PCM_RATE, "instructions": self.session.instructions,
                      "voice": self.session.voice}
            if self.session.turn_policy:
                fields["turn_policy"] = self.session.turn_policy
            if self.session.end_silence_ms is not None:
                fields["end_silence_ms"] = self.session.end_silence_ms
            try:
                upstream = await self._stack.enter_async_context(self._connect(**fields))
            except grpc.aio.AioRpcError as e:
                await self._tell_rpc_error(e)
                raise BridgeClosed(f"the session could not be opened: {e.code().name}", 1011) from None
            except Exception as e:  # noqa: BLE001 - anything else: the client hears why, then we close
                await self._tell_error(f"microturn: {e}", "session_failed")
                raise BridgeClosed("the session could not be opened", 1011) from None
            opened = upstream.opened
            self.tick_ms = opened.tick_ms or 200
            self.buffer.chunk_bytes = 2 * PCM_RATE * self.tick_ms // 1000
            self.upstream = upstream
            self._tasks += [asyncio.create_task(self._pump(), name="realtime-pump"),
                            asyncio.create_task(self._pace(), name="realtime-pacer")]
            log.info("realtime %s -> microturn session %s", self.session.id, opened.session_id)
            await self._out.extension("session", session_id=opened.session_id, replica=opened.replica,
                                      tick_ms=self.tick_ms, turn_policy=self.session.turn_policy or "server default")

    async def leave(self) -> None:
        """The client left: close the session now (its slot is free at once) and let the pump
        read the replica's `closed`, rather than leave it waiting for a resume."""
        if self.upstream is not None and not self.ended.done():
            with contextlib.suppress(Exception):
                await self.upstream.close("realtime client left")
                await asyncio.wait(self._tasks[:1], timeout=CLOSE_WAIT_S)

    async def close(self) -> None:
        """Stop the pump and the pacer, and let go of the session."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    async def _tell_error(self, message: str, code: str) -> None:
        await self._out.send(error_event(ProtocolError(message, None, code, "server_error"), None))

    async def _tell_rpc_error(self, e: grpc.aio.AioRpcError) -> None:
        await self._tell_error(f"microturn: {e.details()}", e.code().name.lower())

    async def _pump(self) -> None:
        try:
            async for _, message in self.upstream.messages():
                await self._on_message(message)
            self.end("the microturn session ended")
        except grpc.aio.AioRpcError as e:
            await self._tell_rpc_error(e)
            self.end(f"the microturn stream failed: {e.code().name}", 1011)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, TimeoutError, RuntimeError) as e:  # the SDK could not reopen the stream
            await self._tell_error(f"microturn: {e}", "session_lost")
            self.end(f"the microturn session was lost: {type(e).__name__}", 1011)
        except Exception as e:
            log.exception("realtime %s: bridging a server message failed", self.session.id)
            self.end(f"internal error: {type(e).__name__}", 1011)

    async def _pace(self) -> None:
        """One chunk per tick on the wall clock, aligned with the replica's ticks."""
        period = self.tick_ms / 1000
        upstream = self.upstream
        t0 = upstream.chunk_clock(guard_s=self.guard_s, period_s=period)
        seq = 0
        while True:
            seq += 1
            delay = t0 + seq * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -CATCH_UP_TICKS * period:  # stalled for long: do not burst, start again
                t0 = time.monotonic() - seq * period
            chunk = self.buffer.take()
            if self.timing:
                self.chunk_sources.pop(seq - SOURCES_KEPT, None)
                if self.buffer.last_source is not None:
                    self.chunk_sources[seq] = self.buffer.last_source
            try:
                await upstream.send_audio(chunk, seq=seq, sample_rate=PCM_RATE)
            except Exception:  # noqa: BLE001 - the session failed: the pump says why and ends it
                return

    def tick_timing(self, timing: pb.TickTiming, received_unix_ns: int) -> dict[str, Any]:
        """What this tick used and when (wall-clock ns; see the module docstring);
        `received_unix_ns`: when the bridge had the tick's AudioOut."""
        source = self.chunk_sources.get(timing.input_seq)
        return {"input_seq": timing.input_seq, "input_event_id": source.event_id if source else None,
                "append_received_unix_ns": source.received_unix_ns if source else None,
                "chunk_sent_unix_ns": self.upstream.sent_ns.get(timing.input_seq),
                "chunk_received_unix_ns": timing.input_received_unix_ns,
                "tick_started_unix_ns": timing.tick_started_unix_ns, "tick_ended_unix_ns": timing.tick_ended_unix_ns,
                "bridge_received_unix_ns": received_unix_ns}
