"""The `openai` reasoner: ask any OpenAI-compatible chat endpoint which tools to call.

One POST to `<base_url>/chat/completions` (a `base_url` without a trailing `/v1` gets it added)
with the conversation as messages, the tools as `tools` and `tool_choice: "auto"`; the answer's
`tool_calls` become the plan. When the job names a tool with its arguments already, no model
call is needed and none is made; when it names a tool without arguments, the model is asked to
fill them in for that tool only.

OpenAI function names must match `^[a-zA-Z0-9_-]{1,64}$`, so a tool such as `ui.render` is
offered as `ui__render` and mapped back. Conversation turns of role `tool` have no call id
here, so they travel as user messages prefixed "Tool result:" (every chat template accepts
those, unlike a mid-conversation system message).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any

from background.reasoners.base import PlannedCall, ReasonerError
from protos.microturn.v1 import events_pb2

try:  # httpx is optional: urllib in a thread does the same, one connection per call
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are the background reasoner of a live voice assistant. Decide which tools to call to "
    "answer the user's latest request. Call tools only when they help; keep arguments minimal."
)
_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def wire_name(tool: str) -> str:
    """A tool name as OpenAI accepts it (dots are not allowed)."""
    name = tool.replace(".", "__")
    return name if _VALID_NAME.match(name) else re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]


def openai_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Tool schemas in the OpenAI `tools` shape, and wire name -> tool name. Accepts schemas
    already in that shape or bare `{name, description, parameters}` ones."""
    out, names = [], {}
    for schema in tools:
        function = schema["function"] if schema.get("type") == "function" else schema
        name = function["name"]
        names[wire_name(name)] = name
        out.append({"type": "function", "function": {
            "name": wire_name(name), "description": function.get("description", ""),
            "parameters": function.get("parameters", {"type": "object", "properties": {}})}})
    return out, names


def chat_messages(job: events_pb2.Job, system_prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in job.conversation:
        if turn.role in ("user", "assistant", "system"):
            messages.append({"role": turn.role, "content": turn.text})
        else:
            messages.append({"role": "user", "content": f"Tool result: {turn.text}"})
    return messages


class OpenAIReasoner:
    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 30.0,
                 system_prompt: str = SYSTEM_PROMPT, temperature: float | None = 0.0,
                 use_httpx: bool | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"openai reasoner: base_url must be an http(s) URL, got {base_url!r}")
        base = base_url.rstrip("/")
        self.url = f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
        self.system_prompt, self.temperature = system_prompt, temperature
        use_httpx = httpx is not None if use_httpx is None else use_httpx
        self._client = httpx.AsyncClient(timeout=timeout_s) if use_httpx else None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def plan(self, job: events_pb2.Job, tools: list[dict[str, Any]]) -> list[PlannedCall]:
        requested = job.requested_tool
        if requested.tool and requested.arguments_json:
            return [PlannedCall(requested.tool, requested.arguments_json)]
        offered, names = openai_tools(tools)
        body: dict[str, Any] = {"model": self.model, "messages": chat_messages(job, self.system_prompt)}
        if offered:
            body["tools"] = offered
            body["tool_choice"] = "auto"
            if requested.tool:  # named without arguments: the model fills them in for that tool
                body["tool_choice"] = {"type": "function", "function": {"name": wire_name(requested.tool)}}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        reply = await self._post(body)
        return parse_tool_calls(reply, names)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            if self._client is not None:
                response = await self._client.post(self.url, json=body, headers=headers)
                if response.status_code >= 400:
                    raise ReasonerError(f"{self.url} answered HTTP {response.status_code}: "
                                        f"{response.text[:300]}")
                return response.json()
            return await asyncio.to_thread(self._post_urllib, body, headers)
        except ReasonerError:
            raise
        except Exception as e:  # connection refused, timeout, not JSON
            raise ReasonerError(f"{self.url}: {type(e).__name__}: {e}") from e

    def _post_urllib(self, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise ReasonerError(f"{self.url} answered HTTP {e.code}: {e.read()[:300]!r}") from e


def parse_tool_calls(reply: dict[str, Any], names: dict[str, str]) -> list[PlannedCall]:
    """`choices[0].message.tool_calls` as planned calls (wire names mapped back). Arguments
    stay as the model wrote them: a malformed call still reaches the registry, whose error
    result tells the session what went wrong with which tool."""
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as e:
        raise ReasonerError(f"the endpoint's answer has no choices[0].message: {str(reply)[:300]}") from e
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        name = function.get("name", "")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):  # some servers send an object
            arguments = json.dumps(arguments)
        calls.append(PlannedCall(names.get(name, name), arguments or "{}"))
    if not calls and message.get("content"):
        log.info("the model answered without tools: %.200s", message["content"])
    return calls
