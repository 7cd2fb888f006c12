"""When the bridge's responses begin and end: `response.created` … `response.done`.

microturn's model takes turns by itself, so a response is opened by the model voicing a turn,
or by the client's `response.create`, which its next turn then fills (`incomplete`,
`turn_not_taken`, if it does not speak within `RESPONSE_WAIT_S`). It ends `completed` when the
model yields or stops, `cancelled` (`turn_detected`) on a barge-in, `cancelled`
(`client_cancelled`) on `response.cancel` (the rest of that model turn is then muted: not sent),
and `incomplete` (`session_closed`) when the session closes. A call of one of the client's own
functions outside a response is a response of its own. `responses.Response` builds the events;
this decides when.
"""

from __future__ import annotations

import asyncio
import contextlib

from cluster.realtime.outbox import Outbox
from cluster.realtime.protocol import ProtocolError
from cluster.realtime.responses import Response
from cluster.realtime.session_config import RealtimeSession

RESPONSE_WAIT_S = 5.0


class ResponseLifecycle:
    def __init__(self, session: RealtimeSession, out: Outbox) -> None:
        self.session = session
        self.out = out
        self.current: Response | None = None
        self.muted = False  # after response.cancel: the rest of the model's turn is not sent
        self._expiry: asyncio.Task | None = None  # for the latest response.create

    @property
    def speaking(self) -> bool:
        return self.current is not None and self.current.speaking

    def audible(self) -> Response | None:
        """The response the model's audio goes to now, if any (none while muted or text only)."""
        if not self.speaking or self.muted or self.session.modality != "audio":
            return None
        return self.current

    async def _open(self, requested: bool = False) -> Response:
        self.current = Response(self.session.modality, self.session.output_format, requested=requested)
        await self.out.send(self.current.created())
        return self.current

    async def request(self) -> None:
        """`response.create`: a response that the model's next turn fills."""
        if self.current is not None:
            raise ProtocolError("a response is in progress; cancel it first or wait for response.done", None,
                                "conversation_already_has_active_response")
        response = await self._open(requested=True)
        if self._expiry is not None:
            self._expiry.cancel()  # its response has ended: it would do nothing
        self._expiry = asyncio.create_task(self._expire(response))

    async def _expire(self, response: Response) -> None:
        await asyncio.sleep(RESPONSE_WAIT_S)
        if self.current is response and not response.speaking:
            await self.finish("incomplete", "turn_not_taken")

    async def cancel(self, response_id: str | None) -> None:
        """`response.cancel`: the response ends, and the rest of the model's turn is not sent."""
        response = self.current
        if response is None or (response_id and response_id != response.id):
            raise ProtocolError("no response in progress to cancel", "response_id", "response_cancel_not_active")
        self.muted = response.speaking
        await self.finish("cancelled", "client_cancelled")

    async def speak(self) -> None:
        """The model voices a turn: fill the requested response, or start one of its own."""
        if self.current is None:
            await self._open()
        if not self.current.speaking:
            events = self.current.start_speaking(self.out.last_item_id)
            self.out.follow(self.current.item_id)
            await self.out.send(*events)

    async def text(self, text: str) -> None:
        """The model's words: the transcript (or text) of the response it voices."""
        if self.speaking and not self.muted:
            await self.out.send(self.current.text_delta(text))

    async def turn_ended(self, status: str, reason: str | None = None) -> None:
        """The model's turn is over (yielded, stopped, or interrupted): so is its response."""
        if self.speaking:
            await self.finish(status, reason)
        self.muted = False

    async def function_call(self, call_id: str, name: str, arguments: str) -> None:
        """The model calls one of the client's functions: in the response in progress, or in
        one of its own."""
        standalone = self.current is None
        response = await self._open() if standalone else self.current
        await self.out.send(*response.function_call(call_id, name, arguments))
        if standalone:
            await self.finish("completed")

    async def finish(self, status: str, reason: str | None = None) -> None:
        response, self.current = self.current, None
        if response is not None:
            await self.out.send(*response.done(status, reason))

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._expiry
