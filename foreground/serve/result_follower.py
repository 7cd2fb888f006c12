"""Follow the event streams of a replica's live sessions and hand each event to the host.

One blocking XREAD over all live sessions' streams at a time (ids remembered per session),
so a replica with 64 sessions makes one Redis call per read, not 64.

The blocking read wakes as soon as an event is published, but its reply still has to wait its
turn on the event loop, which is busiest right around a tick boundary. So the tick loop also
calls `catch_up()` just before each tick: one non-blocking XREAD, so that what was published
before the boundary is in that tick rather than the next one, 200 ms later. Both reads hand
each entry over once: an entry at or below a session's last delivered id is skipped.

The follower lives as long as the replica, whatever Redis does: a failed read (the client has
already retried for seconds, `protos.redis_client`) is logged and retried with backoff, and
the pre-tick catch-up stays out of the way until the blocking read works again. An event the
host cannot take is logged and skipped, never the end of the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2
from protos.redis_client import OutageBackoff

log = logging.getLogger(__name__)

READ_BLOCK_MS = 50


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ResultFollower:
    def __init__(self, bus: EventBus, live_sessions: Callable[[], list[str]],
                 on_event: Callable[[str, str, events_pb2.Event], Awaitable[None]]) -> None:
        self.bus, self.live_sessions, self.on_event = bus, live_sessions, on_event
        self._last: dict[str, str] = {}
        self._start: dict[str, str] = {}  # where a session joining later starts (default: its first event)
        self.backoff = OutageBackoff("reading session events", logger=log)

    async def run(self) -> None:
        while True:
            live = self._follow_live()
            if not live:
                await asyncio.sleep(READ_BLOCK_MS / 1000)
                continue
            try:
                events = await self.bus.read(dict(self._last), block_ms=READ_BLOCK_MS)
            except Exception as e:
                await asyncio.sleep(self.backoff.failed(e))
                continue
            self.backoff.succeeded()
            await self._deliver(events)

    async def catch_up(self) -> None:
        """Deliver whatever is already published, without waiting (before a tick). Skipped
        while the blocking read is failing: the tick would only spend its budget on it."""
        if self.backoff.failures or not self._follow_live():
            return
        try:
            events = await self.bus.read(dict(self._last), block_ms=None)
        except Exception:  # the blocking read retries and logs; a tick must not fail for this
            return
        await self._deliver(events)

    def resume_after(self, session_id: str, entry_id: str) -> None:
        """Follow `session_id`, once it is live, after `entry_id` rather than from its first
        event (a session restored from its journal: what its lost replica handed over)."""
        self._start[session_id] = entry_id

    def _follow_live(self) -> list[str]:
        live = self.live_sessions()
        self._last = {s: self._last.get(s) or self._start.pop(s, "0-0") for s in live}
        return live

    async def _deliver(self, events: list[tuple[str, str, events_pb2.Event]]) -> None:
        for session_id, entry_id, event in events:
            last = self._last.get(session_id)
            if last is None or _entry_key(entry_id) <= _entry_key(last):
                continue  # the session left, or the other read delivered it already
            self._last[session_id] = entry_id
            try:
                await self.on_event(session_id, entry_id, event)
            except Exception:  # e.g. the session closed meanwhile: skip this event, not the rest
                log.exception("event %s (%s) for session %s could not be handed over; skipped",
                              entry_id, event.event_id, session_id)
