"""Reasoners: `direct` runs the named tool (or searches the last user turn); `openai` sends the
conversation and the tools to an OpenAI-compatible endpoint and parses its `tool_calls`.

The endpoint here is a tiny fake on 127.0.0.1 (it stands for an external service): it records
each request body and answers with a scripted reply.
"""

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from background.reasoners import (
    DirectReasoner,
    OpenAIReasoner,
    PlannedCall,
    ReasonerError,
    build_reasoner,
)
from protos.microturn.v1 import events_pb2

pytestmark = pytest.mark.timeout(60)

TOOLS = [
    {"type": "function", "function": {"name": "web_search", "description": "search",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                     "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ui.render", "description": "draw",
                                      "parameters": {"type": "object", "properties": {},
                                                     "additionalProperties": False}}},
]


def _job(tool: str = "", arguments_json: str = "") -> events_pb2.Job:
    return events_pb2.Job(
        session_id="s", job_id="j", epoch=3,
        conversation=[events_pb2.ConversationTurn(role="user", text="what is the capital of France?"),
                      events_pb2.ConversationTurn(role="assistant", text="let me look"),
                      events_pb2.ConversationTurn(role="tool", text="{\"time\": \"noon\"}"),
                      events_pb2.ConversationTurn(role="user", text="  and its population?  ")],
        requested_tool=events_pb2.ToolRequest(tool=tool, arguments_json=arguments_json))


class FakeOpenAI:
    """Records request bodies and headers; answers every POST with `self.reply`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.reply: dict = {}
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, dict(self.headers), body))
                payload = json.dumps(fake.reply).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


def _tool_calls(*calls: tuple[str, object]) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)]}}]}


def test_direct_runs_the_named_tool_with_its_arguments():
    calls = asyncio.run(DirectReasoner().plan(_job("calculator", '{"expression": "2+2"}'), TOOLS))
    assert calls == [PlannedCall("calculator", '{"expression": "2+2"}')]
    assert asyncio.run(DirectReasoner().plan(_job("clock"), TOOLS)) == [PlannedCall("clock", "{}")]


def test_direct_without_a_tool_searches_the_last_user_turn():
    calls = asyncio.run(DirectReasoner().plan(_job(), TOOLS))
    assert calls == [PlannedCall("web_search", json.dumps({"query": "and its population?"}))]
    silent = events_pb2.Job(session_id="s", job_id="j")
    assert asyncio.run(DirectReasoner().plan(silent, TOOLS)) == []


def test_openai_sends_conversation_and_tools_and_parses_tool_calls(fake_openai):
    fake_openai.reply = _tool_calls(("web_search", '{"query": "population of Paris"}'),
                                    ("ui__render", {"component": "card"}))

    async def main():
        reasoner = OpenAIReasoner(fake_openai.url, model="tiny", api_key="sk-test", timeout_s=5)
        try:
            return await reasoner.plan(_job(), TOOLS)
        finally:
            await reasoner.close()

    calls = asyncio.run(main())
    assert calls == [PlannedCall("web_search", '{"query": "population of Paris"}'),
                     PlannedCall("ui.render", '{"component": "card"}')]  # wire name mapped back
    (path, headers, body), = fake_openai.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "tiny" and body["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in body["tools"]] == ["web_search", "ui__render"]
    assert body["tools"][0]["function"]["parameters"]["required"] == ["query"]
    roles = [(m["role"], m["content"]) for m in body["messages"]]
    assert roles[0][0] == "system"
    assert roles[1:] == [("user", "what is the capital of France?"), ("assistant", "let me look"),
                         ("user", 'Tool result: {"time": "noon"}'), ("user", "  and its population?  ")]


def test_openai_without_httpx_sends_the_same_request_through_urllib(fake_openai):
    fake_openai.reply = _tool_calls(("web_search", '{"query": "q"}'))
    reasoner = OpenAIReasoner(fake_openai.url, model="m", api_key="k", use_httpx=False)
    assert asyncio.run(reasoner.plan(_job(), TOOLS)) == [PlannedCall("web_search", '{"query": "q"}')]
    (path, headers, body), = fake_openai.requests
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert len(body["tools"]) == 2 and body["tool_choice"] == "auto"
    fake_openai.status, fake_openai.reply = 503, {"error": "busy"}
    with pytest.raises(ReasonerError, match="HTTP 503"):
        asyncio.run(reasoner.plan(_job(), TOOLS))


def test_openai_named_tool_with_arguments_needs_no_model_call(fake_openai):
    reasoner = build_reasoner("openai", base_url=fake_openai.url + "/v1", model="m")
    calls = asyncio.run(reasoner.plan(_job("clock", '{"zone": "UTC"}'), TOOLS))
    assert calls == [PlannedCall("clock", '{"zone": "UTC"}')] and fake_openai.requests == []


def test_openai_named_tool_without_arguments_forces_that_tool(fake_openai):
    fake_openai.reply = _tool_calls(("web_search", '{"query": "x"}'))
    reasoner = build_reasoner("openai", base_url=fake_openai.url + "/v1/", model="m")
    assert asyncio.run(reasoner.plan(_job("web_search"), TOOLS)) == [PlannedCall("web_search", '{"query": "x"}')]
    (path, _, body), = fake_openai.requests
    assert path == "/v1/chat/completions"  # a base URL ending in /v1 is not doubled
    assert body["tool_choice"] == {"type": "function", "function": {"name": "web_search"}}


def test_openai_answer_without_tools_plans_nothing(fake_openai):
    fake_openai.reply = {"choices": [{"message": {"role": "assistant", "content": "Paris."}}]}
    reasoner = OpenAIReasoner(fake_openai.url, model="m")
    assert asyncio.run(reasoner.plan(_job(), TOOLS)) == []


def test_openai_failures_are_reasoner_errors_that_say_what_happened(fake_openai):
    fake_openai.status, fake_openai.reply = 500, {"error": "model overloaded"}
    with pytest.raises(ReasonerError, match="HTTP 500.*model overloaded"):
        asyncio.run(OpenAIReasoner(fake_openai.url, model="m").plan(_job(), TOOLS))
    fake_openai.status, fake_openai.reply = 200, {"nothing": "useful"}
    with pytest.raises(ReasonerError, match="no choices"):
        asyncio.run(OpenAIReasoner(fake_openai.url, model="m").plan(_job(), TOOLS))
    fake_openai.stop()  # nobody listens any more
    with pytest.raises(ReasonerError, match="chat/completions"):
        asyncio.run(OpenAIReasoner(fake_openai.url, model="m", timeout_s=2).plan(_job(), TOOLS))


def test_build_reasoner_names_the_kinds():
    assert isinstance(build_reasoner("direct"), DirectReasoner)
    with pytest.raises(ValueError, match="direct, openai, vllm"):
        build_reasoner("gpt")
    with pytest.raises(ValueError, match="base_url"):
        build_reasoner("openai", base_url="localhost:8000", model="m")

