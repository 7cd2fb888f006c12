"""Follow the event streams of a replica's live sessions and hand each event to the host.

One blocking XREAD over all live sessions' streams at a time (ids remembered per session),
so a replica with 64 sessions makes one Redis call per read, not 64.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

READ_BLOCK_MS = 50


class ResultFollower:
    def __init__(self, bus: EventBus, live_sessions: Callable[[], list[str]],
                 on_event: Callable[[str, str, events_pb2.Event], Awaitable[None]]) -> None:
        self.bus, self.live_sessions, self.on_event = bus, live_sessions, on_event
        self._last: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            live = self.live_sessions()
            self._last = {s: self._last.get(s, "0-0") for s in live}
            if not live:
                await asyncio.sleep(READ_BLOCK_MS / 1000)
                continue
            try:
                events = await self.bus.read(dict(self._last), block_ms=READ_BLOCK_MS)
            except Exception:
                log.exception("reading session events failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for session_id, entry_id, event in events:
                self._last[session_id] = entry_id
                await self.on_event(session_id, entry_id, event)
