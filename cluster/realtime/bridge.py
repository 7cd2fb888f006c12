"""One Realtime WebSocket connection bridged to one microturn session (`Interaction.Converse`).

The bridge reads the client's events and the replica's messages and routes each to the part
that tells it: `session_link` (the session: opening, audio pacing, `?microturn_timing=1`),
`response_lifecycle` (`response.created` … `response.done`), `turn_events` (speech and turns),
`tool_items` (function calls and their outputs); `outbox` sends in order.

Client -> microturn:
- `session.update`: settings (`session_config`); the microturn session opens at the client's
  first event (or `OPEN_AFTER_S` after connecting), with the turn policy, instructions and voice
  known by then;
- `input_audio_buffer.append`: decoded to 24 kHz PCM16 and buffered, for the link's pacer to
  send one tick-sized chunk every tick; `.commit` sends a partial chunk at once, `.clear` drops
  what waits;
- `conversation.item.create`: user text -> `TextInput`; `input_image` (a `data:image/jpeg;base64`
  URL) -> a `VideoFrame`; user `input_audio` -> the input buffer; a `function_call` or
  `function_call_output` item -> `tool_items`;
- `response.create` / `response.cancel` -> `response_lifecycle`.

microturn -> client:
- turn events -> `turn_events`; `AudioOut` while the model holds the floor ->
  `response.output_audio.delta`, `TextOut` -> `response.output_audio_transcript.delta`;
- `ToolCall`/`ToolResult` -> `tool_items`;
- `Error` -> `error`; `SessionClosed` -> the response in progress ends `incomplete`, the
  WebSocket closes.

With `extensions` (the console asks for them: `?microturn_events=1`), microturn's own events go
out too, as `microturn.*` types the SDKs pass through untouched: `microturn.session`,
`microturn.turn` (every turn event with its cause), `microturn.latency`, `microturn.ui`
(ui.render components), `microturn.transcript`, `microturn.woven`.

With `timing` (`?microturn_timing=1`), every tick's timing (`SessionLink.tick_timing`) goes out
as well: on the `response.output_audio.delta` as an extra field `microturn_timing` (the SDKs
ignore unknown fields), or as a `microturn.tick` event when the tick sends no delta.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from cluster.realtime.audio import AudioDecoder, AudioEncoder, AudioSource, BufferFull
from cluster.realtime.outbox import Outbox, SendEvent
from cluster.realtime.protocol import (
    FunctionCallItem,
    MessageItem,
    ProtocolError,
    client_event_id,
    error_event,
    new_id,
    parse_client_event,
    parse_item,
)
from cluster.realtime.response_lifecycle import ResponseLifecycle
from cluster.realtime.session_config import RealtimeSession
from cluster.realtime.session_link import BridgeClosed, SessionLink
from cluster.realtime.tool_items import Publish, ToolItems
from cluster.realtime.turn_events import TurnEvents
from protos.microturn.v1 import interaction_pb2 as pb

OPEN_AFTER_S = 1.0  # a client that sends nothing still gets a live session (the model may speak)
MAX_TEXT_BYTES = 4096  # foreground.engine.input_validation.MAX_TEXT_BYTES
JPEG_PREFIX = "data:image/jpeg;base64,"


class RealtimeBridge:
    def __init__(self, send: SendEvent, connect: Callable[..., Any], publish: Publish | None = None,
                 extensions: bool = False, model: str = "microturn", timing: bool = False) -> None:
        self.session = RealtimeSession(id=new_id("sess"), model=model or "microturn")
        self.decoder = AudioDecoder(self.session.input_format)
        self.encoder = AudioEncoder(self.session.output_format)
        self.out = Outbox(send, extensions)
        self.link = SessionLink(self.session, connect, self.out, self._on_server, timing)
        self.responses = ResponseLifecycle(self.session, self.out)
        self.turns = TurnEvents(self.link, self.out, self.responses)
        self.tools = ToolItems(self.session, self.link, self.out, self.responses, publish,
                               epoch=lambda: self.turns.epoch)

    # -- the connection ------------------------------------------------------------------------

    async def run(self, incoming: AsyncIterator[str]) -> BridgeClosed:
        """Serve one connection until the client leaves or the session ends; returns why it ended."""
        await self.out.emit("session.created", session=self.session.describe())
        reader = asyncio.create_task(self._read(incoming))
        opener = asyncio.create_task(self._open_later())
        try:
            await asyncio.wait({reader, self.link.ended}, return_when=asyncio.FIRST_COMPLETED)
            if self.link.ended.done():
                return self.link.ended.result()
            reader.result()  # raises what the reader raised
            return BridgeClosed("client closed")
        finally:
            for task in (reader, opener):
                task.cancel()
            await self.link.leave()
            for task in (reader, opener):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.close()

    async def close(self) -> None:
        """Stop what runs beside the reader: the link's pump and pacer, a response's timer."""
        await self.responses.close()
        await self.link.close()

    async def _read(self, incoming: AsyncIterator[str]) -> None:
        async for raw in incoming:
            await self.handle(raw)

    async def _open_later(self) -> None:
        await asyncio.sleep(OPEN_AFTER_S)
        try:
            await self.link.ensure_open()
        except BridgeClosed as e:
            self.link.end(e.reason, e.code)

    # -- client events -------------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """One client event; a bad one gets an `error` naming the field, and the session goes on."""
        try:
            event = parse_client_event(raw)
        except ProtocolError as e:
            await self.out.send(error_event(e, client_event_id(raw)))
            return
        try:
            await getattr(self, "_on_" + event.type.replace(".", "_"))(event)
        except ProtocolError as e:
            await self.out.send(error_event(e, event.event_id))
        except BridgeClosed as e:
            self.link.end(e.reason, e.code)

    async def _on_session_update(self, event) -> None:
        self.session.apply(event.session, opened=self.link.upstream is not None)
        if self.decoder.format != self.session.input_format:
            self.decoder = AudioDecoder(self.session.input_format)
        if self.encoder.format != self.session.output_format:
            self.encoder = AudioEncoder(self.session.output_format)
        await self.link.ensure_open()
        await self.out.emit("session.updated", session=self.session.describe())

    async def _on_input_audio_buffer_append(self, event) -> None:
        self._append_audio(event.audio, "audio", event.event_id)
        if self.link.upstream is None:
            await self.link.ensure_open()

    def _append_audio(self, audio_b64: str, param: str, event_id: str | None = None) -> None:
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError(f"{param}: not valid base64 ({e})", param) from None
        try:
            pcm = self.decoder(data)
            self.link.buffer.append(pcm, AudioSource(event_id, time.time_ns()))
        except BufferFull as e:
            raise ProtocolError(f"{param}: {e}", param, "input_audio_buffer_full") from None
        except ValueError as e:
            raise ProtocolError(f"{param}: {e}", param) from None

    async def _on_input_audio_buffer_commit(self, event) -> None:
        if not self.link.buffer.appended_since_commit:
            raise ProtocolError("the input audio buffer is empty: nothing to commit", None,
                                "input_audio_buffer_commit_empty")
        self.link.buffer.commit()
        await self.turns.commit()

    async def _on_input_audio_buffer_clear(self, event) -> None:
        self.link.buffer.clear()
        await self.out.emit("input_audio_buffer.cleared")

    async def _on_conversation_item_create(self, event) -> None:
        item = parse_item(event.item)
        if isinstance(item, MessageItem):
            await self._message(item)
            echo = item.model_dump(exclude_none=True)
            for part in echo["content"]:  # do not send a camera frame or audio back
                for key in ("image_url", "audio"):
                    if key in part:
                        part[key] = f"({len(part[key])} characters)"
        elif isinstance(item, FunctionCallItem):
            echo = await self.tools.function_call(item)
        else:
            echo = await self.tools.function_call_output(item)
        echo.update(id=item.id or new_id("item"), object="realtime.item", status="completed")
        await self.out.add_item(echo)

    async def _message(self, item: MessageItem) -> None:
        """User or system text -> TextInput, an image -> a VideoFrame, audio -> the input buffer
        (an assistant message is history the model cannot take: kept in the echo only). Every part
        is checked before any is sent."""
        if item.role == "assistant":
            return
        actions: list[tuple[str, Any]] = []
        for i, part in enumerate(item.content):
            param = f"item.content[{i}]"
            if part.type in ("input_text", "text"):
                if not part.text:
                    raise ProtocolError(f"{param}.text: missing", f"{param}.text", "missing_required_parameter")
                if len(part.text.encode()) > MAX_TEXT_BYTES:
                    raise ProtocolError(f"{param}.text: more than {MAX_TEXT_BYTES} bytes", f"{param}.text")
                actions.append(("text", part.text))
            elif part.type == "input_image":
                url = part.image_url or ""
                if not url.startswith(JPEG_PREFIX):
                    raise ProtocolError(f"{param}.image_url: microturn takes `{JPEG_PREFIX}...` URLs",
                                        f"{param}.image_url")
                try:
                    actions.append(("jpeg", base64.b64decode(url[len(JPEG_PREFIX):], validate=True)))
                except (binascii.Error, ValueError) as e:
                    raise ProtocolError(f"{param}.image_url: not valid base64 ({e})", f"{param}.image_url") from None
            elif part.type == "input_audio":
                if not part.audio:
                    raise ProtocolError(f"{param}.audio: missing", f"{param}.audio", "missing_required_parameter")
                actions.append(("audio", part.audio))
            else:
                raise ProtocolError(f"{param}.type: {part.type!r} is not taken in a {item.role} message",
                                    f"{param}.type")
        await self.link.ensure_open()
        upstream = self.link.upstream
        for kind, value in actions:
            if kind == "text":
                await upstream.send_text(value)
            elif kind == "jpeg":
                await upstream.send(pb.ClientMessage(video=pb.VideoFrame(seq=self.turns.input_seq, jpeg=value)))
            else:
                self._append_audio(value, "item.content.audio")

    async def _on_conversation_item_truncate(self, event) -> None:
        await self.out.emit("conversation.item.truncated", item_id=event.item_id, content_index=event.content_index,
                            audio_end_ms=event.audio_end_ms)

    async def _on_response_create(self, event) -> None:
        await self.link.ensure_open()
        await self.responses.request()

    async def _on_response_cancel(self, event) -> None:
        await self.responses.cancel(event.response_id)

    # -- microturn -> client ---------------------------------------------------------------------

    async def _on_server(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("payload")
        if kind == "audio":
            await self._on_audio(message)
        elif kind == "text":
            await self.responses.text(message.text.text)
        elif kind == "turn":
            await self.turns.on_turn(message.tick, message.turn)
        elif kind == "tool_call":
            await self.tools.on_call(message.tool_call)
        elif kind == "tool_result":
            await self.tools.on_result(message.tool_result)
        elif kind == "ui":
            ui = message.ui
            await self.out.extension("ui", job_id=ui.job_id, component=ui.component, props=_json(ui.props_json))
        elif kind == "transcript":
            t = message.transcript
            await self.out.extension("transcript", role=t.role, text=t.text, final=t.final)
        elif kind == "woven":
            w = message.woven
            await self.out.extension("woven", job_id=w.job_id, event_id=w.event_id,
                                     published_unix_ns=w.published_unix_ns, received_unix_ns=w.received_unix_ns,
                                     woven_unix_ns=w.woven_unix_ns)
        elif kind == "error":
            e = message.error
            error_type = "invalid_request_error" if e.code == "INVALID_ARGUMENT" else "server_error"
            await self.out.send(error_event(ProtocolError(e.message, e.field or None, e.code.lower(), error_type),
                                            None))
        elif kind == "go_away":
            await self.out.send(error_event(ProtocolError(f"microturn: {message.go_away.reason}; reconnect", None,
                                                          "go_away", "server_error"), None))
        elif kind == "closed":
            await self.responses.finish("incomplete", "session_closed")
            self.link.end(f"session closed: {message.closed.reason}")

    async def _on_audio(self, message: pb.ServerMessage) -> None:
        received_ns = time.time_ns()
        audio = message.audio
        await self.turns.on_tick(message.tick, audio)
        timing = self.link.tick_timing(audio.timing, received_ns) if self.link.timing else None
        response = self.responses.audible()
        if response is None:
            if timing is not None:
                await self.out.emit("microturn.tick", **timing)
            return
        pcm = self.encoder(audio.pcm16)
        response.audio_bytes += len(pcm)
        delta = response.audio_delta(base64.b64encode(pcm).decode())
        if timing is not None:
            delta["microturn_timing"] = timing
        await self.out.send(delta)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
