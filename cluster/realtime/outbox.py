"""What the bridge tells the client, in order.

The reader, the pump and the pacer all send, so events go out one writer at a time; `microturn.*`
extensions go out only when the client asked for them (`?microturn_events=1`); and every item
added to the conversation names the one before it (`previous_item_id`), so the bridge keeps the
conversation's last item here, where every part that adds one finds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.realtime.protocol import server_event

SendEvent = Callable[[dict[str, Any]], Awaitable[None]]


def item_added(previous_item_id: str | None, item: dict[str, Any]) -> list[dict[str, Any]]:
    """`conversation.item.added` then `.done`: an item that arrives whole."""
    return [server_event("conversation.item.added", previous_item_id=previous_item_id, item=item),
            server_event("conversation.item.done", previous_item_id=previous_item_id, item=item)]


class Outbox:
    def __init__(self, send: SendEvent, extensions: bool = False) -> None:
        self._send = send
        self.extensions = extensions
        self.last_item_id: str | None = None
        self._lock = asyncio.Lock()

    async def send(self, *events: dict[str, Any]) -> None:
        """`events` back to back: no other writer's event comes between them."""
        async with self._lock:
            for event in events:
                await self._send(event)

    async def emit(self, event_type: str, /, **fields: Any) -> None:
        await self.send(server_event(event_type, **fields))

    async def extension(self, name: str, /, **fields: Any) -> None:
        if self.extensions:
            await self.emit(f"microturn.{name}", **fields)

    def follow(self, item_id: str) -> str | None:
        """Make `item_id` the conversation's last item; returns the one it follows."""
        previous, self.last_item_id = self.last_item_id, item_id
        return previous

    async def add_item(self, item: dict[str, Any]) -> None:
        await self.send(*item_added(self.follow(item["id"]), item))
