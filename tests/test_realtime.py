"""The gateway's OpenAI Realtime WebSocket, driven by the official `openai` SDK against a live
cluster: a turn, a barge-in, a web search, a malformed event, a wrong key.

The seeded model speaks noise; with `server_vad` (microturn's `vad` policy) it takes the floor
after 600 ms of the user's silence and, since it cannot end a turn itself, speaks until its
5 s cap, so a barge-in one second into its turn finds it speaking (as in tests/test_demo.py).
"""

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from cluster.config import load_config
from cluster.runtime import LocalCluster
from cluster.speech import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RATE = 24_000
PIECE = 2_880  # 120 ms: not a multiple of the session's 200 ms chunks, on purpose


def pcm16(text: str) -> np.ndarray:
    return np.clip(np.round(synthesize(text, sample_rate=RATE) * 32767), -32768, 32767).astype(np.int16)


class Microphone:
    """Streams a growing tape at real-time pace in 120 ms pieces (silence when it runs out)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.tape = np.zeros(0, np.int16)

    def say(self, samples: np.ndarray) -> None:
        self.tape = np.concatenate([self.tape, samples])

    async def run(self) -> None:
        started, sent = time.monotonic(), 0
        while True:
            piece, self.tape = self.tape[:PIECE], self.tape[PIECE:]
            piece = np.concatenate([piece, np.zeros(PIECE - len(piece), np.int16)])
            await self.connection.input_audio_buffer.append(audio=base64.b64encode(piece.tobytes()).decode())
            sent += PIECE
            await asyncio.sleep(max(0.0, started + sent / RATE - time.monotonic()))


def test_the_openai_sdk_holds_a_conversation_through_the_realtime_websocket(ray_cluster, redis_server):
    from openai import AsyncOpenAI

    config = load_config(redis__url=redis_server.url, serve__grpc_port=0,
                         foreground__num_cpus=0.1, ray__address=ray_cluster)
    question = pcm16("Hello, can you hear me? Tell me about the weather in Paris.")
    barge_in = pcm16("Wait, sorry, stop, what about the trains to Lyon tomorrow?")

    async def scenario() -> dict:
        async with LocalCluster(config) as cluster:
            base_url = f"{cluster.endpoints.realtime}/v1"
            assert cluster.endpoints.realtime and any("/v1/realtime" in line for line in cluster.endpoints.lines())

            with pytest.raises(Exception, match="401"):  # refused before the upgrade
                async with AsyncOpenAI(base_url=base_url, api_key="not-the-key").realtime.connect(model="microturn"):
                    pass

            seen: dict = {"types": [], "audio_deltas": 0, "done": [], "errors": [], "tool_outputs": []}
            client = AsyncOpenAI(base_url=base_url, api_key=cluster.api_key)
            async with client.realtime.connect(model="microturn") as connection:
                await connection.session.update(session={
                    "type": "realtime", "instructions": "Answer briefly.",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                        "turn_detection": {"type": "server_vad"}}}})
                mic = Microphone(connection)
                feeder = asyncio.create_task(mic.run())
                mic.say(np.zeros(RATE // 2, np.int16))
                mic.say(question)
                await connection.conversation.item.create(item={
                    "type": "function_call", "name": "web_search", "call_id": "call_search",
                    "arguments": json.dumps({"query": "weather in Paris"})})
                await connection.send_raw(json.dumps({"type": "input_audio_buffer.append", "event_id": "bad_1",
                                                      "audio": "%%% not base64"}))
                barged_at = None
                deadline = time.monotonic() + 90
                try:
                    while time.monotonic() < deadline:
                        event = await asyncio.wait_for(connection.recv(), timeout=20)
                        seen["types"].append(event.type)
                        if event.type == "response.output_audio.delta":
                            seen["audio_deltas"] += 1
                            assert len(base64.b64decode(event.delta)) == 2 * RATE // 5  # one 200 ms tick
                            if barged_at is None and seen["audio_deltas"] == 4:  # the model is speaking
                                barged_at = time.monotonic()
                                mic.say(barge_in)
                        elif event.type == "response.done":
                            seen["done"].append((event.response.status, (event.response.status_details or {})
                                                 and event.response.status_details.reason))
                        elif event.type == "error":
                            seen["errors"].append((event.error.event_id, event.error.param))
                        elif event.type == "conversation.item.added" and event.item.type == "function_call_output":
                            seen["tool_outputs"].append((event.item.call_id, event.item.output))
                        if (any(s == "cancelled" for s, _ in seen["done"]) and seen["tool_outputs"]
                                and seen["errors"]):
                            break
                finally:
                    feeder.cancel()
            deadline = time.monotonic() + 5  # the client left: its session is closed, not kept for a resume
            while (live := (await cluster.foreground.describe.remote())["live"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            seen["live_after_close"] = live
            seen["session"] = seen["types"][:2]
            return seen

    started = time.monotonic()
    seen = asyncio.run(scenario())
    print(f"realtime scenario: {time.monotonic() - started:.1f} s, {len(seen['types'])} events, "
          f"{seen['audio_deltas']} audio deltas, responses {seen['done']}\n{seen['types']}")
    types = seen["types"]
    assert seen["session"] == ["session.created", "session.updated"]
    assert "input_audio_buffer.speech_started" in types and "input_audio_buffer.speech_stopped" in types
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    assert "input_audio_buffer.committed" in types
    assert seen["audio_deltas"] >= 4
    assert ("cancelled", "turn_detected") in seen["done"]  # the barge-in ended the response
    assert seen["live_after_close"] == 0
    assert ("bad_1", "audio") in seen["errors"]  # the malformed event, named; the session went on after it
    [(call_id, output)] = seen["tool_outputs"]
    assert call_id == "call_search" and "results" in json.loads(output)
