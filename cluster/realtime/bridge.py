"""One Realtime WebSocket connection bridged to one microturn session (`Interaction.Converse`).

Client -> microturn:
- `session.update`: settings (`session_config`); the microturn session opens at the client's
  first event (or `OPEN_AFTER_S` after connecting), with the turn policy, instructions and voice
  known by then;
- `input_audio_buffer.append`: decoded to 24 kHz PCM16 and buffered; a pacer sends one chunk of
  `SessionOpened.tick_ms` every tick, on the wall clock, aligned with the replica's ticks
  (`ClientSession.chunk_clock`), silence when the client's audio has not arrived;
  `.commit` sends a partial chunk at once, `.clear` drops what waits;
- `conversation.item.create`: user text -> `TextInput`; `input_image` (a `data:image/jpeg;base64`
  URL) -> a `VideoFrame`; user `input_audio` -> the input buffer; a `function_call` item naming a
  microturn tool (web_search, fetch_url, calculator, clock, ui.render or ui_render) -> a
  `ToolRequest` (its result comes back as a `function_call_output` item with the same `call_id`);
  `function_call_output` -> a `ToolResult` on the session's event stream (Redis), which the
  replica weaves into the model's input as it does background results;
- `response.create`: the model takes turns by itself, so this opens a response that the model's
  next turn fills (`response.done` `incomplete` if it does not speak within `RESPONSE_WAIT_S`);
  `response.cancel`: the response ends `cancelled` and the rest of that model turn is not sent.

microturn -> client:
- USER_SPEECH_STARTED/STOPPED -> `input_audio_buffer.speech_started`/`speech_stopped`, then
  `input_audio_buffer.committed` and the user's audio item (`conversation.item.added`/`done`);
- the model's turn -> a response (`responses.Response`): `AudioOut` while it holds the floor ->
  `response.output_audio.delta`, `TextOut` -> `response.output_audio_transcript.delta`;
  YIELDED / MODEL_SPEECH_STOPPED -> `response.done` `completed`; INTERRUPTED (a barge-in) ->
  `response.done` `cancelled` (reason `turn_detected`);
- `ToolCall`/`ToolResult` of microturn's background tools -> `function_call` and
  `function_call_output` conversation items (`conversation.item.added`/`done`: not response
  output, so a client does not try to run them); a `ToolCall` naming one of the client's own
  function tools -> a response with that `function_call` item and
  `response.function_call_arguments.done`, as the spec has it;
- `Error` -> `error`; `SessionClosed` -> the WebSocket closes.

With `extensions` (the console asks for them: `?microturn_events=1`), microturn's own events go
out too, as `microturn.*` types the SDKs pass through untouched: `microturn.session`,
`microturn.turn` (every turn event with its cause), `microturn.latency`, `microturn.ui`
(ui.render components), `microturn.transcript`, `microturn.woven`.

With `timing` (`?microturn_timing=1`: what `microturn bench load --via realtime` asks for),
every tick's timing goes out as well, so a client can take the serving overhead apart as a
gRPC client does with `AudioOut.timing`: on the `response.output_audio.delta` as an extra field
`microturn_timing` (the SDKs ignore unknown fields), or as a `microturn.tick` event when the
tick sends no delta. It says which client event carried the chunk's last byte and when the
bridge had it, when the pacer sent the chunk, and when the replica received it and ran the tick.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cluster.realtime.audio import PCM_RATE, AudioDecoder, AudioEncoder, AudioSource, BufferFull, InputBuffer
from cluster.realtime.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ProtocolError,
    client_event_id,
    error_event,
    function_call_item,
    function_call_output_item,
    new_id,
    parse_client_event,
    parse_item,
    server_event,
    user_audio_item,
)
from cluster.realtime.responses import Response
from cluster.realtime.session_config import RealtimeSession, microturn_tool
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb

log = logging.getLogger(__name__)

OPEN_AFTER_S = 1.0  # a client that sends nothing still gets a live session (the model may speak)
RESPONSE_WAIT_S = 5.0
CLOSE_WAIT_S = 2.0  # for the replica's `closed` after the client left
MAX_TEXT_BYTES = 4096  # foreground.engine.input_validation.MAX_TEXT_BYTES
JPEG_PREFIX = "data:image/jpeg;base64,"
CATCH_UP_TICKS = 4  # the pacer sends missed chunks up to this many at once, else restarts its clock
SOURCES_KEPT = 64  # chunks whose source the bridge remembers for `timing` (a tick uses a recent one)

Kind = pb.TurnEvent.Kind
SendEvent = Callable[[dict[str, Any]], Awaitable[None]]
Publish = Callable[[events_pb2.Event], Awaitable[Any]]


class BridgeClosed(Exception):
    """The microturn session could not be opened or has ended; the WebSocket closes."""

    def __init__(self, reason: str, code: int = 1000) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


class RealtimeBridge:
    def __init__(self, send: SendEvent, connect: Callable[..., Any], publish: Publish | None = None,
                 extensions: bool = False, model: str = "microturn", timing: bool = False) -> None:
        self._send = send
        self._connect = connect  # (**SessionOpen fields) -> async context manager of a ClientSession
        self._publish = publish
        self.extensions = extensions
        self.timing = timing
        self.chunk_sources: dict[int, AudioSource] = {}  # pacer seq -> its source (with `timing`)
        self.session = RealtimeSession(id=new_id("sess"), model=model or "microturn")
        self.decoder = AudioDecoder(self.session.input_format)
        self.encoder = AudioEncoder(self.session.output_format)
        self.buffer = InputBuffer(PCM_RATE // 5)  # 200 ms until SessionOpened says otherwise
        self.upstream = None  # cluster.client.ClientSession, once open
        self.tick_ms = 200
        self.response: Response | None = None
        self.muted = False  # after response.cancel: the rest of the model's turn is not sent
        self.epoch = 0
        self.last_item_id: str | None = None
        self.user_item: str | None = None  # the user's speech in progress (speech_started .. stopped)
        self.user_committed = False
        self.input_seq = 0  # the client chunk the replica's latest tick used
        self.model_audible = False  # the latest tick voiced the model
        self.pending_requests: dict[str, deque[str]] = defaultdict(deque)  # microturn tool -> client call_ids
        self.call_ids: dict[str, str] = {}  # microturn call_id -> the client's call_id
        self.client_calls: dict[str, tuple[str, str]] = {}  # call_id -> (function, job_id) the client runs
        self.marks: dict[str, int] = {}  # tick / wall-clock marks for latencies
        self._stack = contextlib.AsyncExitStack()
        self._open_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closed: asyncio.Future = asyncio.get_running_loop().create_future()

    # -- the connection ------------------------------------------------------------------------

    async def run(self, incoming: AsyncIterator[str]) -> BridgeClosed:
        """Serve one connection until the client leaves or the session ends; returns why it ended."""
        await self.emit("session.created", session=self.session.describe())
        reader = asyncio.create_task(self._read(incoming))
        opener = asyncio.create_task(self._open_later())
        try:
            await asyncio.wait({reader, self._closed}, return_when=asyncio.FIRST_COMPLETED)
            if self._closed.done():
                return self._closed.result()
            reader.result()  # raises what the reader raised
            return BridgeClosed("client closed")
        finally:
            for task in (reader, opener):
                task.cancel()
            if self.upstream is not None and not self._closed.done():
                # The client left: close the session now (its slot is free at once) and let the
                # pump read the replica's `closed`, rather than leave it waiting for a resume.
                with contextlib.suppress(Exception):
                    await self.upstream.close("realtime client left")
                    await asyncio.wait(self._tasks[:1], timeout=CLOSE_WAIT_S)
            for task in (reader, opener, *self._tasks):
                task.cancel()
            for task in (reader, opener, *self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self._stack.aclose()

    def _end(self, reason: str, code: int = 1000) -> None:
        if not self._closed.done():
            self._closed.set_result(BridgeClosed(reason, code))

    async def _read(self, incoming: AsyncIterator[str]) -> None:
        async for raw in incoming:
            await self.handle(raw)

    async def _open_later(self) -> None:
        await asyncio.sleep(OPEN_AFTER_S)
        await self._open_quietly()

    async def _open_quietly(self) -> None:
        try:
            await self.ensure_open()
        except BridgeClosed as e:
            self._end(e.reason, e.code)

    async def emit(self, event_type: str, /, **fields: Any) -> None:
        await self.send(server_event(event_type, **fields))

    async def send(self, *events: dict[str, Any]) -> None:
        async with self._send_lock:  # one writer at a time: reader, pump and pacer all send
            for event in events:
                await self._send(event)

    async def extension(self, name: str, /, **fields: Any) -> None:
        if self.extensions:
            await self.emit(f"microturn.{name}", **fields)

    async def ensure_open(self) -> None:
        """Open the microturn session (once) with the settings known now."""
        async with self._open_lock:
            if self.upstream is not None:
                return
            if self._closed.done():
                raise self._closed.result()
            fields = {"input_sample_rate": PCM_RATE, "instructions": self.session.instructions,
                      "voice": self.session.voice}
            if self.session.turn_policy:
                fields["turn_policy"] = self.session.turn_policy
            try:
                upstream = await self._stack.enter_async_context(self._connect(**fields))
            except grpc.aio.AioRpcError as e:
                await self.send(error_event(ProtocolError(f"microturn: {e.details()}", None, e.code().name.lower(),
                                                          "server_error"), None))
                raise BridgeClosed(f"the session could not be opened: {e.code().name}", 1011) from None
            except Exception as e:  # noqa: BLE001 - anything else: the client hears why, then we close
                await self.send(error_event(ProtocolError(f"microturn: {e}", None, "session_failed",
                                                          "server_error"), None))
                raise BridgeClosed("the session could not be opened", 1011) from None
            opened = upstream.opened
            self.tick_ms = opened.tick_ms or 200
            self.buffer.chunk_bytes = 2 * PCM_RATE * self.tick_ms // 1000
            self.upstream = upstream
            self._tasks += [asyncio.create_task(self._pump(), name="realtime-pump"),
                            asyncio.create_task(self._pace(), name="realtime-pacer")]
            log.info("realtime %s -> microturn session %s", self.session.id, opened.session_id)
            await self.extension("session", session_id=opened.session_id, replica=opened.replica,
                                 tick_ms=self.tick_ms, turn_policy=self.session.turn_policy or "server default")

    # -- client events -------------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """One client event; a bad one gets an `error` naming the field, and the session goes on."""
        try:
            event = parse_client_event(raw)
        except ProtocolError as e:
            await self.send(error_event(e, client_event_id(raw)))
            return
        try:
            await getattr(self, "_on_" + event.type.replace(".", "_"))(event)
        except ProtocolError as e:
            await self.send(error_event(e, event.event_id))
        except BridgeClosed as e:
            self._end(e.reason, e.code)

    async def _on_session_update(self, event) -> None:
        self.session.apply(event.session, opened=self.upstream is not None)
        if self.decoder.format != self.session.input_format:
            self.decoder = AudioDecoder(self.session.input_format)
        if self.encoder.format != self.session.output_format:
            self.encoder = AudioEncoder(self.session.output_format)
        await self.ensure_open()
        await self.emit("session.updated", session=self.session.describe())

    async def _on_input_audio_buffer_append(self, event) -> None:
        self._append_audio(event.audio, "audio", event.event_id)
        if self.upstream is None:
            await self.ensure_open()

    def _append_audio(self, audio_b64: str, param: str, event_id: str | None = None) -> None:
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError(f"{param}: not valid base64 ({e})", param) from None
        try:
            pcm = self.decoder(data)
            self.buffer.append(pcm, AudioSource(event_id, time.time_ns()))
        except BufferFull as e:
            raise ProtocolError(f"{param}: {e}", param, "input_audio_buffer_full") from None
        except ValueError as e:
            raise ProtocolError(f"{param}: {e}", param) from None

    async def _on_input_audio_buffer_commit(self, event) -> None:
        if not self.buffer.appended_since_commit:
            raise ProtocolError("the input audio buffer is empty: nothing to commit", None,
                                "input_audio_buffer_commit_empty")
        self.buffer.commit()
        await self._commit_user_audio(self.user_item or new_id("item"))
        self.user_committed = self.user_item is not None

    async def _on_input_audio_buffer_clear(self, event) -> None:
        self.buffer.clear()
        await self.emit("input_audio_buffer.cleared")

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
            echo = await self._function_call(item)
        else:
            echo = await self._function_call_output(item)
        echo.update(id=item.id or new_id("item"), object="realtime.item", status="completed")
        previous, self.last_item_id = self.last_item_id, echo["id"]
        await self.send(server_event("conversation.item.added", previous_item_id=previous, item=echo),
                        server_event("conversation.item.done", previous_item_id=previous, item=echo))

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
        await self.ensure_open()
        for kind, value in actions:
            if kind == "text":
                await self.upstream.send_text(value)
            elif kind == "jpeg":
                await self.upstream.send(pb.ClientMessage(video=pb.VideoFrame(seq=self.input_seq, jpeg=value)))
            else:
                self._append_audio(value, "item.content.audio")

    async def _function_call(self, item: FunctionCallItem) -> dict[str, Any]:
        call_id = item.call_id or new_id("call")
        tool = microturn_tool(item.name)
        if tool is not None:
            try:
                arguments = json.loads(item.arguments or "{}")
            except ValueError as e:
                raise ProtocolError(f"item.arguments: not JSON ({e})", "item.arguments") from None
            if not isinstance(arguments, dict):
                raise ProtocolError("item.arguments: a JSON object", "item.arguments")
            await self.ensure_open()
            self.pending_requests[tool].append(call_id)
            await self.upstream.request_tool(tool, json.dumps(arguments))
        elif item.name not in self.session.tools:
            raise ProtocolError(f"item.name: {item.name!r} is neither a microturn tool (web_search, fetch_url, "
                                "calculator, clock, ui.render) nor a function declared in session.tools",
                                "item.name")
        return function_call_item("", call_id, item.name, item.arguments or "{}")

    async def _function_call_output(self, item: FunctionCallOutputItem) -> dict[str, Any]:
        """The client ran one of its functions: the result goes on the session's event stream,
        where the replica takes it like a background result (forwarded, woven into the input)."""
        await self.ensure_open()
        name, job_id = self.client_calls.get(item.call_id, ("function", item.call_id))
        self.client_calls.setdefault(item.call_id, (name, job_id))
        try:
            json.loads(item.output)
            result_json = item.output
        except ValueError:
            result_json = json.dumps(item.output)
        if self._publish is not None:
            opened = self.upstream.opened
            event = events_pb2.Event(
                session_id=opened.session_id, event_id=f"realtime:{item.call_id}:{new_id('out')}", job_id=job_id,
                epoch=self.epoch, created_unix_ms=int(time.time() * 1000),
                tool_result=events_pb2.ToolResult(job_id=job_id, call_id=item.call_id, tool=name,
                                                  result_json=result_json))
            try:
                await self._publish(event)
            except Exception as e:  # noqa: BLE001 - Redis away: the client hears it, the session goes on
                raise ProtocolError(f"item: the result could not reach the session ({e})", "item",
                                    "event_bus_unavailable", "server_error") from None
        return function_call_output_item("", item.call_id, item.output)

    async def _on_conversation_item_truncate(self, event) -> None:
        await self.emit("conversation.item.truncated", item_id=event.item_id, content_index=event.content_index,
                        audio_end_ms=event.audio_end_ms)

    async def _on_response_create(self, event) -> None:
        if self.response is not None:
            raise ProtocolError("a response is in progress; cancel it first or wait for response.done", None,
                                "conversation_already_has_active_response")
        await self.ensure_open()
        self.response = Response(self.session.modality, self.session.output_format, requested=True)
        await self.send(self.response.created())
        self._tasks.append(asyncio.create_task(self._expire(self.response)))

    async def _expire(self, response: Response) -> None:
        await asyncio.sleep(RESPONSE_WAIT_S)
        if self.response is response and not response.speaking:
            await self._finish("incomplete", "turn_not_taken")

    async def _on_response_cancel(self, event) -> None:
        response = self.response
        if response is None or (event.response_id and event.response_id != response.id):
            raise ProtocolError("no response in progress to cancel", "response_id", "response_cancel_not_active")
        self.muted = response.speaking
        await self._finish("cancelled", "client_cancelled")

    # -- the response in progress ----------------------------------------------------------------

    async def _speak(self) -> None:
        """The model voices a turn: fill the requested response, or start one of its own."""
        if self.response is None:
            self.response = Response(self.session.modality, self.session.output_format)
            await self.send(self.response.created())
        if not self.response.speaking:
            events = self.response.start_speaking(self.last_item_id)
            self.last_item_id = self.response.item_id
            await self.send(*events)

    async def _finish(self, status: str, reason: str | None = None) -> None:
        response, self.response = self.response, None
        if response is not None:
            await self.send(*response.done(status, reason))

    # -- microturn -> client ---------------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            async for _, message in self.upstream.messages():
                await self._on_server(message)
            self._end("the microturn session ended")
        except grpc.aio.AioRpcError as e:
            await self.send(error_event(ProtocolError(f"microturn: {e.details()}", None, e.code().name.lower(),
                                                      "server_error"), None))
            self._end(f"the microturn stream failed: {e.code().name}", 1011)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, TimeoutError, RuntimeError) as e:  # the SDK could not reopen the stream
            await self.send(error_event(ProtocolError(f"microturn: {e}", None, "session_lost", "server_error"), None))
            self._end(f"the microturn session was lost: {type(e).__name__}", 1011)
        except Exception as e:
            log.exception("realtime %s: bridging a server message failed", self.session.id)
            self._end(f"internal error: {type(e).__name__}", 1011)

    async def _on_server(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("payload")
        if kind == "audio":
            await self._on_audio(message)
        elif kind == "text":
            if self.response is not None and self.response.speaking and not self.muted:
                await self.send(self.response.text_delta(message.text.text))
        elif kind == "turn":
            await self._on_turn(message.tick, message.turn)
        elif kind == "tool_call":
            await self._on_tool_call(message.tool_call)
        elif kind == "tool_result":
            await self._on_tool_result(message.tool_result)
        elif kind == "ui":
            ui = message.ui
            await self.extension("ui", job_id=ui.job_id, component=ui.component, props=_json(ui.props_json))
        elif kind == "transcript":
            t = message.transcript
            await self.extension("transcript", role=t.role, text=t.text, final=t.final)
        elif kind == "woven":
            w = message.woven
            await self.extension("woven", job_id=w.job_id, event_id=w.event_id, published_unix_ns=w.published_unix_ns,
                                 received_unix_ns=w.received_unix_ns, woven_unix_ns=w.woven_unix_ns)
        elif kind == "error":
            e = message.error
            error_type = "invalid_request_error" if e.code == "INVALID_ARGUMENT" else "server_error"
            await self.send(error_event(ProtocolError(e.message, e.field or None, e.code.lower(), error_type), None))
        elif kind == "go_away":
            await self.send(error_event(ProtocolError(f"microturn: {message.go_away.reason}; reconnect", None,
                                                      "go_away", "server_error"), None))
        elif kind == "closed":
            await self._finish("incomplete", "session_closed")
            self._end(f"session closed: {message.closed.reason}")

    async def _on_audio(self, message: pb.ServerMessage) -> None:
        audio = message.audio
        self.input_seq = audio.timing.input_seq or self.input_seq
        self.model_audible = audio.speech
        if audio.speech and not self.muted:
            await self._speak()
        elif "barge_in_seq" in self.marks:
            await self._stop_latency(self.marks.pop("barge_in_seq"), message.tick)
        timing = self._tick_timing(audio.timing) if self.timing else None
        response = self.response
        if response is None or not response.speaking or self.muted or self.session.modality != "audio":
            if timing is not None:
                await self.emit("microturn.tick", **timing)
            return
        pcm = self.encoder(audio.pcm16)
        response.audio_bytes += len(pcm)
        delta = response.audio_delta(base64.b64encode(pcm).decode())
        if timing is not None:
            delta["microturn_timing"] = timing
        await self.send(delta)

    def _tick_timing(self, timing: pb.TickTiming) -> dict[str, Any]:
        """What this tick used and when (wall-clock ns; see the module docstring)."""
        source = self.chunk_sources.get(timing.input_seq)
        return {"input_seq": timing.input_seq, "input_event_id": source.event_id if source else None,
                "append_received_unix_ns": source.received_unix_ns if source else None,
                "chunk_sent_unix_ns": self.upstream.sent_ns.get(timing.input_seq),
                "chunk_received_unix_ns": timing.input_received_unix_ns,
                "tick_started_unix_ns": timing.tick_started_unix_ns, "tick_ended_unix_ns": timing.tick_ended_unix_ns}

    async def _on_turn(self, tick: int, turn: pb.TurnEvent) -> None:
        kind = Kind.Name(turn.kind)
        self.epoch = max(self.epoch, turn.epoch + (turn.kind == Kind.INTERRUPTED))
        at_ms = max(self.input_seq - 1, 0) * self.tick_ms  # where in the client's audio it was heard
        await self.extension("turn", kind=kind, cause=turn.cause, epoch=turn.epoch, tick=tick, audio_ms=at_ms)
        if turn.kind == Kind.USER_SPEECH_STARTED:
            self.user_item, self.user_committed = new_id("item"), False
            self.marks["user_started_tick"] = tick
            await self.emit("input_audio_buffer.speech_started", audio_start_ms=at_ms, item_id=self.user_item)
            if self.response is not None and self.response.speaking:  # a barge-in, or a backchannel
                if self.model_audible:  # still voiced in this tick: measure at the first silent one
                    self.marks["barge_in_seq"] = self.input_seq
                else:
                    await self._stop_latency(self.input_seq, tick)
        elif turn.kind == Kind.USER_SPEECH_STOPPED:
            item_id = self.user_item or new_id("item")
            self.user_item = None
            self.marks["user_stopped_tick"] = tick
            self.marks["user_stopped_seq"] = self.input_seq
            await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=at_ms, item_id=item_id)
            if not self.user_committed:
                await self._commit_user_audio(item_id)
        elif turn.kind == Kind.MODEL_SPEECH_STARTED:
            if not self.muted:
                await self._speak()
            stopped = self.marks.get("user_stopped_tick")
            if stopped is not None:
                sent = self.upstream.sent_ns.get(self.marks.get("user_stopped_seq", -1))
                await self.extension("latency", kind="turn_taking", ms=(tick - stopped) * self.tick_ms,
                                     wall_ms=round((time.time_ns() - sent) / 1e6, 1) if sent else None,
                                     cause=turn.cause, tick=tick)
                del self.marks["user_stopped_tick"]
        elif turn.kind == Kind.INTERRUPTED:
            if self.response is not None and self.response.speaking:
                await self._finish("cancelled", "turn_detected")
            self.muted = False
        elif turn.kind in (Kind.YIELDED, Kind.MODEL_SPEECH_STOPPED):
            if self.response is not None and self.response.speaking:
                await self._finish("completed")
            self.muted = False

    async def _stop_latency(self, seq: int, tick: int) -> None:
        """From sending the client's chunk in which the replica heard the user start, to the
        model's first silent tick arriving here (wall clock, this gateway)."""
        sent = self.upstream.sent_ns.get(seq)
        if sent:
            await self.extension("latency", kind="interruption_stop", ms=round((time.time_ns() - sent) / 1e6, 1),
                                 tick=tick)

    async def _commit_user_audio(self, item_id: str) -> None:
        previous, self.last_item_id = self.last_item_id, item_id
        item = user_audio_item(item_id)
        await self.send(server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
                        server_event("conversation.item.added", previous_item_id=previous, item=item),
                        server_event("conversation.item.done", previous_item_id=previous, item=item))

    async def _on_tool_call(self, call: events_pb2.ToolCall) -> None:
        if call.tool in self.session.tools:  # the client's own function: the client runs it
            self.client_calls[call.call_id] = (call.tool, call.job_id)
            standalone = self.response is None
            if standalone:
                self.response = Response(self.session.modality, self.session.output_format)
                await self.send(self.response.created())
            await self.send(*self.response.function_call(call.call_id, call.tool, call.arguments_json))
            if standalone:
                await self._finish("completed")
            return
        pending = self.pending_requests.get(call.tool)
        if pending:  # the client asked for it: its own function_call item stands for the call
            self.call_ids[call.call_id] = pending.popleft()
            return
        item = function_call_item(new_id("item"), call.call_id, call.tool, call.arguments_json)
        await self._add_item(item)

    async def _on_tool_result(self, result: events_pb2.ToolResult) -> None:
        if result.call_id in self.client_calls:
            return  # the client's function: its own function_call_output is the result
        output = result.result_json if not result.error else json.dumps({"error": result.error})
        call_id = self.call_ids.pop(result.call_id, result.call_id)
        await self._add_item(function_call_output_item(new_id("item"), call_id, output))

    async def _add_item(self, item: dict[str, Any]) -> None:
        previous, self.last_item_id = self.last_item_id, item["id"]
        await self.send(server_event("conversation.item.added", previous_item_id=previous, item=item),
                        server_event("conversation.item.done", previous_item_id=previous, item=item))

    # -- the pacer -------------------------------------------------------------------------------

    async def _pace(self) -> None:
        """One chunk per tick on the wall clock, aligned with the replica's ticks."""
        period = self.tick_ms / 1000
        upstream = self.upstream
        t0 = upstream.chunk_clock(period_s=period)
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


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
