"""The Realtime bridge without a cluster: client events checked and mapped, microturn's server
messages told as Realtime events (a fake upstream session); the server's auth and console."""

import asyncio
import base64
import contextlib
import json

import numpy as np
import pytest

from cluster.realtime import response_lifecycle
from cluster.realtime.bridge import RealtimeBridge
from cluster.realtime.session_config import EAGERNESS_END_SILENCE_MS
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb

K = pb.TurnEvent


class FakeUpstream:
    """What the bridge uses of `cluster.client.ClientSession`."""

    def __init__(self, **open_fields) -> None:
        self.open_fields = open_fields
        self.opened = pb.SessionOpened(session_id="s1", token="t", tick_ms=200, output_sample_rate=24_000)
        self.sent: list = []
        self.sent_ns: dict[int, int] = {}
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.guard_s: float | None = None

    def chunk_clock(self, guard_s: float = 0.025, period_s: float = 0.2) -> float:
        import time
        self.guard_s = guard_s
        return time.monotonic() + 3600  # the pacer never fires in these tests

    async def send_audio(self, pcm16, seq, sample_rate=0):
        self.sent.append(("audio", pcm16))

    async def send_text(self, text):
        self.sent.append(("text", text))

    async def request_tool(self, tool, arguments_json="{}"):
        self.sent.append(("tool", tool, json.loads(arguments_json)))

    async def send(self, message):
        self.sent.append(("message", message))

    async def close(self, reason="done"):
        self.sent.append(("close", reason))

    async def messages(self):
        while (item := await self.inbox.get()) is not None:
            yield 0, item


class Harness:
    def __init__(self, extensions=False, publish=None) -> None:
        self.events: list[dict] = []
        self.upstream: FakeUpstream | None = None
        self.published: list = []

        @contextlib.asynccontextmanager
        async def connect(**fields):
            self.upstream = FakeUpstream(**fields)
            yield self.upstream

        async def send(event):
            self.events.append(event)

        async def record(event):
            self.published.append(event)

        self.bridge = RealtimeBridge(send, connect, publish or record, extensions=extensions)

    async def client(self, **event):
        await self.bridge.handle(json.dumps(event))

    async def server(self, *messages, settle=True):
        for message in messages:
            await self.upstream.inbox.put(message)
        if settle:
            for _ in range(20):
                await asyncio.sleep(0)
            while not self.upstream.inbox.empty():
                await asyncio.sleep(0.001)
            for _ in range(20):
                await asyncio.sleep(0)

    async def close(self) -> None:
        await self.bridge.close()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def take(self) -> list[dict]:
        out, self.events[:] = list(self.events), []
        return out


def audio(tick, speech, seq=0, value=1000):
    pcm = np.full(4800, value if speech else 0, np.int16).tobytes()
    return pb.ServerMessage(tick=tick, audio=pb.AudioOut(audio_seq=tick, pcm16=pcm, speech=speech,
                                                          timing=pb.TickTiming(input_seq=seq)))


def turn(tick, kind, cause="vad", epoch=0):
    return pb.ServerMessage(tick=tick, turn=pb.TurnEvent(kind=kind, cause=cause, epoch=epoch))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_bad_events_get_an_error_naming_the_field_and_the_session_goes_on():
    async def scenario():
        h = Harness()
        await h.bridge.handle("{not json")
        await h.client(type="no.such.event", event_id="e1")
        await h.client(type="input_audio_buffer.append", event_id="e2", audio="%%%not base64")
        await h.client(type="input_audio_buffer.append", event_id="e3")
        await h.client(type="conversation.item.create", event_id="e4",
                       item={"type": "message", "role": "user", "content": [{"type": "input_text"}]})
        await h.client(type="session.update", event_id="e5",
                       session={"type": "realtime", "audio": {"input": {"turn_detection": {"type": "magic"}}}})
        await h.client(type="conversation.item.create", event_id="e6",
                       item={"type": "function_call", "name": "rm_rf", "arguments": "{}"})
        errors = [e["error"] for e in h.take()]
        assert [(e["event_id"], e["param"]) for e in errors] == [
            (None, None), ("e1", "type"), ("e2", "audio"), ("e3", "audio"), ("e4", "item.content[0].text"),
            ("e5", "session.audio.input.turn_detection.type"), ("e6", "item.name")]
        assert errors[3]["code"] == "missing_required_parameter"
        await h.client(type="conversation.item.create", event_id="e7",
                       item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        assert h.types() == ["conversation.item.added", "conversation.item.done"]
        assert ("text", "hi") in h.upstream.sent
        h.take()
        await h.client(type="conversation.item.truncate", item_id="item_1", content_index=0, audio_end_ms=1200)
        assert [(e["type"], e.get("audio_end_ms")) for e in h.take()] == [("conversation.item.truncated", 1200)]
        await h.close()

    run(scenario())


def test_each_link_sends_its_chunks_at_a_guard_of_its_own():
    """The bridge's sessions do not all send at the same moment before the tick."""
    from cluster.realtime.session_link import PACER_GUARD_S

    async def guard_of_one_link():
        h = Harness()
        await h.client(type="session.update", session={"type": "realtime"})
        for _ in range(10):  # the pacer task asks for its clock
            await asyncio.sleep(0)
        guard = h.upstream.guard_s
        await h.close()
        return guard

    guards = [run(guard_of_one_link()) for _ in range(8)]
    assert all(PACER_GUARD_S[0] <= g <= PACER_GUARD_S[1] for g in guards), guards
    assert len(set(guards)) == len(guards), guards


def test_turn_detection_sets_how_long_the_session_waits_before_answering():
    """`semantic_vad` eagerness and `server_vad` silence_duration_ms become the session's
    `end_silence_ms`; a wait out of range is an error naming the field; it is fixed once open."""
    async def opened_with(turn_detection: dict) -> tuple[dict | None, list[dict]]:
        h = Harness()
        await h.client(type="session.update", event_id="first",
                       session={"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}})
        events = h.take()
        fields = h.upstream.open_fields if h.upstream is not None else None
        if fields is not None:
            await h.client(type="session.update", event_id="later", session={"audio": {"input": {
                "turn_detection": {**turn_detection, "eagerness": "high", "silence_duration_ms": 50}}}})
            events += h.take()
        await h.close()
        return fields, events

    async def scenario():
        low, low_events = await opened_with({"type": "semantic_vad", "eagerness": "low"})
        auto, _ = await opened_with({"type": "semantic_vad"})
        vad, vad_events = await opened_with({"type": "server_vad", "silence_duration_ms": 900})
        too_long, too_long_events = await opened_with({"type": "server_vad", "silence_duration_ms": 60_000})
        return low, low_events, auto, vad, vad_events, too_long, too_long_events

    low, low_events, auto, vad, vad_events, too_long, too_long_events = run(scenario())
    assert (low["turn_policy"], low["end_silence_ms"]) == ("model", EAGERNESS_END_SILENCE_MS["low"])
    assert auto["turn_policy"] == "model" and "end_silence_ms" not in auto  # the server's setting
    assert (vad["turn_policy"], vad["end_silence_ms"]) == ("vad", 900)
    updated = next(e for e in vad_events if e["type"] == "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] == {"type": "server_vad", "silence_duration_ms": 900}
    for events in (low_events, vad_events):  # changing the wait after the session opened
        [error] = [e for e in events if e["type"] == "error"]
        assert error["error"]["event_id"] == "later" and error["error"]["param"] == "session.audio.input.turn_detection"
    [refused] = [e for e in too_long_events if e["type"] == "error"]
    assert refused["error"]["param"] == "session.audio.input.turn_detection.silence_duration_ms"
    assert too_long is None or "end_silence_ms" not in too_long


def test_session_update_picks_the_turn_policy_and_it_is_fixed_once_open():
    async def scenario():
        h = Harness()
        await h.client(type="session.update", session={
            "type": "realtime", "instructions": "be brief",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "semantic_vad"}}},
            "tools": [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}]})
        assert h.upstream.open_fields == {"input_sample_rate": 24_000, "instructions": "be brief", "voice": "",
                                          "turn_policy": "model"}
        [updated] = h.take()
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert [t["name"] for t in updated["session"]["tools"]] == ["lookup_order"]
        await h.client(type="session.update", event_id="late",
                       session={"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
        [error] = h.take()
        assert error["error"]["param"] == "session.audio.input.turn_detection"
        assert h.bridge.session.turn_policy == "model"
        # μ-law at 8 kHz is decoded and upsampled: 20 ms -> 480 samples at 24 kHz
        await h.client(type="input_audio_buffer.append", audio=base64.b64encode(bytes(160)).decode())
        assert len(h.bridge.link.buffer) == 960
        await h.close()

    run(scenario())


def test_a_model_turn_is_a_response_and_a_barge_in_cancels_it():
    async def scenario():
        h = Harness(extensions=True)
        await h.client(type="session.update", session={"type": "realtime"})
        h.take()
        await h.server(turn(1, K.USER_SPEECH_STARTED), audio(2, False, seq=3), turn(2, K.USER_SPEECH_STOPPED))
        events = [e for e in h.take() if not e["type"].startswith("microturn.")]
        assert [e["type"] for e in events] == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
        assert events[1]["audio_end_ms"] == 400 and events[0]["item_id"] == events[2]["item_id"]

        await h.server(audio(5, True, seq=6), pb.ServerMessage(tick=5, text=pb.TextOut(text="hel")),
                       turn(5, K.MODEL_SPEECH_STARTED, "threshold"), audio(6, True, seq=7),
                       pb.ServerMessage(tick=6, text=pb.TextOut(text="lo")), turn(6, K.YIELDED, "length"),
                       turn(6, K.MODEL_SPEECH_STOPPED, "length"), audio(7, False))
        events = h.take()
        spec = [e["type"] for e in events if not e["type"].startswith("microturn.")]
        assert spec == ["response.created", "response.output_item.added", "conversation.item.added",
                        "response.content_part.added", "response.output_audio.delta",
                        "response.output_audio_transcript.delta", "response.output_audio.delta",
                        "response.output_audio_transcript.delta", "response.output_audio.done",
                        "response.output_audio_transcript.done", "response.content_part.done",
                        "response.output_item.done", "conversation.item.done", "response.done"]
        done = events[[e["type"] for e in events].index("response.done")]
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0]["transcript"] == "hello"
        delta = next(e for e in events if e["type"] == "response.output_audio.delta")
        assert np.frombuffer(base64.b64decode(delta["delta"]), "<i2").tolist()[:2] == [1000, 1000]
        latency = next(e for e in events if e["type"] == "microturn.latency")
        assert latency["kind"] == "turn_taking" and latency["ms"] == 600

        # a barge-in: the model goes silent in the onset tick, then stops
        await h.server(audio(9, True), turn(9, K.MODEL_SPEECH_STARTED, "threshold"), audio(10, False),
                       turn(10, K.USER_SPEECH_STARTED), audio(13, False), turn(13, K.INTERRUPTED),
                       turn(13, K.MODEL_SPEECH_STOPPED))
        done = [e for e in h.take() if e["type"] == "response.done"]
        assert [d["response"]["status"] for d in done] == ["cancelled"]
        assert done[0]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert h.bridge.turns.epoch == 1
        await h.close()

    run(scenario())


def test_response_cancel_ends_the_response_and_mutes_the_rest_of_the_turn():
    async def scenario():
        h = Harness()
        await h.client(type="session.update", session={"type": "realtime"})
        await h.client(type="response.cancel", event_id="c0")
        assert h.take()[-1]["error"]["code"] == "response_cancel_not_active"
        await h.server(audio(1, True), turn(1, K.MODEL_SPEECH_STARTED, "head"))
        h.take()
        await h.client(type="response.cancel", event_id="c1")
        assert h.take()[-1]["response"]["status_details"]["reason"] == "client_cancelled"
        await h.server(audio(2, True), audio(3, True), turn(3, K.YIELDED, "head"), turn(3, K.MODEL_SPEECH_STOPPED))
        assert h.take() == []  # the rest of that turn is not sent
        await h.server(audio(8, True), turn(8, K.MODEL_SPEECH_STARTED, "head"))
        assert h.types()[0] == "response.created"  # the next turn is a new response
        await h.close()

    run(scenario())


def test_tools_microturn_ones_as_items_the_clients_own_as_function_calls():
    async def scenario():
        h = Harness()
        await h.client(type="session.update", session={
            "type": "realtime", "tools": [{"type": "function", "name": "lookup_order"}]})
        h.take()
        await h.client(type="conversation.item.create", item={
            "type": "function_call", "name": "web_search", "call_id": "c_ws", "arguments": '{"query": "paris"}'})
        assert ("tool", "web_search", {"query": "paris"}) in h.upstream.sent
        h.take()
        result = events_pb2.ToolResult(job_id="j1", call_id="j1:0", tool="web_search", result_json='{"hits": []}')
        await h.server(pb.ServerMessage(tool_call=events_pb2.ToolCall(job_id="j1", call_id="j1:0", tool="web_search",
                                                                      arguments_json='{"query": "paris"}')),
                       pb.ServerMessage(tool_result=result))
        [added, done] = h.take()
        assert added["item"]["type"] == "function_call_output" and added["item"]["call_id"] == "c_ws"
        assert json.loads(added["item"]["output"]) == {"hits": []}

        # the background's own call (not asked for by the client): both as items
        await h.server(pb.ServerMessage(tool_call=events_pb2.ToolCall(job_id="j2", call_id="j2:0", tool="clock")),
                       pb.ServerMessage(tool_result=events_pb2.ToolResult(job_id="j2", call_id="j2:0", tool="clock",
                                                                          error="boom")))
        items = [e["item"] for e in h.take() if e["type"] == "conversation.item.added"]
        assert [(i["type"], i["call_id"]) for i in items] == [("function_call", "j2:0"),
                                                              ("function_call_output", "j2:0")]
        assert json.loads(items[1]["output"]) == {"error": "boom"}

        # a call of the client's own function: the spec's function call, its output goes back on the bus
        await h.server(pb.ServerMessage(tool_call=events_pb2.ToolCall(job_id="j3", call_id="j3:0", tool="lookup_order",
                                                                      arguments_json='{"id": 7}')),
                       pb.ServerMessage(tool_result=events_pb2.ToolResult(job_id="j3", call_id="j3:0",
                                                                          tool="lookup_order", error="unknown tool")))
        events = h.take()
        assert [e["type"] for e in events if e["type"].startswith("response.")] == [
            "response.created", "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done", "response.done"]
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert (args_done["name"], args_done["call_id"]) == ("lookup_order", "j3:0")
        assert args_done["arguments"] == '{"id": 7}'
        await h.client(type="conversation.item.create",
                       item={"type": "function_call_output", "call_id": "j3:0", "output": '{"status": "shipped"}'})
        [event] = h.published
        assert (event.session_id, event.job_id, event.tool_result.tool) == ("s1", "j3", "lookup_order")
        assert json.loads(event.tool_result.result_json) == {"status": "shipped"}
        await h.close()

    run(scenario())


def test_a_function_output_the_bus_refuses_is_an_error_that_says_why():
    """The gateway's real bus: over `limits.event_bytes` is `event_too_large` (the client can send
    less), a Redis nobody answers is `event_bus_unavailable`; the session goes on either way."""
    from cluster.redis_server import free_port
    from protos.event_bus import EventBus
    from protos.redis_client import redis_from_url

    async def scenario():
        bus = EventBus(redis_from_url(f"redis://127.0.0.1:{free_port()}/0", retries=0), max_event_bytes=1024)
        h = Harness(publish=bus.publish)
        await h.client(type="session.update", session={
            "type": "realtime", "tools": [{"type": "function", "name": "lookup_order"}]})
        h.take()
        await h.client(type="conversation.item.create", event_id="big", item={
            "type": "function_call_output", "call_id": "c1", "output": json.dumps({"order": "x" * 2000})})
        [error] = [e["error"] for e in h.take()]
        assert (error["type"], error["code"], error["param"], error["event_id"]) == (
            "invalid_request_error", "event_too_large", "item.output", "big")
        assert "limits.event_bytes" in error["message"]
        await h.client(type="conversation.item.create", event_id="small", item={
            "type": "function_call_output", "call_id": "c1", "output": '{"order": "shipped"}'})
        [error] = [e["error"] for e in h.take()]
        assert (error["type"], error["code"], error["event_id"]) == ("server_error", "event_bus_unavailable", "small")
        await h.client(type="conversation.item.create",
                       item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        assert h.types() == ["conversation.item.added", "conversation.item.done"]
        await bus.close()
        await h.close()

    run(scenario())


def test_response_create_waits_for_the_model_and_gives_up_incomplete(monkeypatch):
    monkeypatch.setattr(response_lifecycle, "RESPONSE_WAIT_S", 0.05)

    async def scenario():
        h = Harness()
        await h.client(type="response.create")
        assert h.types() == ["response.created"]
        await h.client(type="response.create", event_id="again")
        assert h.take()[-1]["error"]["code"] == "conversation_already_has_active_response"
        await asyncio.sleep(0.1)
        [done] = h.take()
        assert done["response"]["status"] == "incomplete"
        await h.close()

    run(scenario())


def test_the_console_is_plain_static_files():
    from cluster.realtime.server import CONSOLE_DIR

    names = {p.name for p in CONSOLE_DIR.iterdir()}
    assert {"index.html", "console.js", "console.css", "audio-worklets.js"} <= names
    html = (CONSOLE_DIR / "index.html").read_text()
    assert "/console/console.js" in html


@pytest.mark.timeout(60)
def test_the_server_refuses_a_wrong_key_before_the_upgrade_and_serves_the_console():
    import aiohttp

    from cluster.realtime.server import RealtimeServer
    from protos.api_keys import ApiKeys, hash_api_key

    async def scenario():
        server = RealtimeServer("127.0.0.1", 0, "127.0.0.1:1", ApiKeys([hash_api_key("right")]))
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.url}/v1/realtime?model=microturn",
                                    headers={"Authorization": "Bearer wrong"}) as reply:
                    assert reply.status == 401
                    assert (await reply.json())["error"]["code"] == "invalid_api_key"
                async with http.get(f"{server.url}/v1/realtime") as reply:
                    assert reply.status == 401
                async with http.get(f"{server.url}/") as reply:
                    assert reply.status == 200 and "microturn" in await reply.text()
                async with http.get(f"{server.url}/console/console.js") as reply:
                    assert reply.status == 200
        finally:
            await server.stop()

    run(scenario())


@pytest.mark.timeout(60)
def test_the_server_declines_websocket_compression_that_clients_offer():
    """Browsers and the OpenAI SDK offer permessage-deflate; deflating every audio delta cost the
    gateway ~0.5 ms a message (32 sessions: chunk overhead p99 21-29 ms against 11-15 without)."""
    import aiohttp

    from cluster.realtime.server import RealtimeServer
    from protos.api_keys import ApiKeys, hash_api_key

    async def scenario():
        server = RealtimeServer("127.0.0.1", 0, "127.0.0.1:1", ApiKeys([hash_api_key("right")]))
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"{server.url}/v1/realtime?model=microturn", compress=15,
                                           headers={"Authorization": "Bearer right"}) as ws:
                    assert ws.compress == 0  # offered, not taken
                    assert "permessage-deflate" not in ws._response.headers.get("Sec-WebSocket-Extensions", "")
        finally:
            await server.stop()

    run(scenario())


def test_the_realtime_port_follows_the_grpc_port_unless_set(monkeypatch):
    from cluster.config import load_config

    serve = load_config().serve
    assert serve.realtime and serve.realtime_port_for(50151) == 50152 and serve.realtime_port_for(0) == 0
    monkeypatch.setenv("MICROTURN_SERVE_REALTIME_PORT", "8080")
    assert load_config().serve.realtime_port_for(50151) == 8080
    monkeypatch.setenv("MICROTURN_SERVE_REALTIME", "false")
    assert not load_config().serve.realtime
