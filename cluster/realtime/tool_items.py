"""Tools over the Realtime protocol, both ways: function calls and their outputs as items.

- a client's `function_call` item naming a microturn tool (web_search, fetch_url, calculator,
  clock, ui.render or ui_render) -> a `ToolRequest`; its result comes back as a
  `function_call_output` item with the client's `call_id`;
- `ToolCall`/`ToolResult` of microturn's background tools -> `function_call` and
  `function_call_output` conversation items (`conversation.item.added`/`done`: not response
  output, so a client does not try to run them);
- a `ToolCall` naming one of the client's own function tools -> a response with that
  `function_call` item and `response.function_call_arguments.done`, as the spec has it; the
  client's `function_call_output` -> a `ToolResult` on the session's event stream (Redis), which
  the replica weaves into the model's input as it does background results. An output the bus
  refuses as too large (over `limits.event_bytes`) is an `error` `event_too_large` naming the
  limit; a bus that cannot be reached, `event_bus_unavailable`. Either way the session goes on.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.realtime.outbox import Outbox
from cluster.realtime.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    ProtocolError,
    function_call_item,
    function_call_output_item,
    new_id,
)
from cluster.realtime.response_lifecycle import ResponseLifecycle
from cluster.realtime.session_config import RealtimeSession, microturn_tool
from cluster.realtime.session_link import SessionLink
from protos.event_bus import EventTooLarge
from protos.microturn.v1 import events_pb2

Publish = Callable[[events_pb2.Event], Awaitable[Any]]


class ToolItems:
    def __init__(self, session: RealtimeSession, link: SessionLink, out: Outbox, responses: ResponseLifecycle,
                 publish: Publish | None, epoch: Callable[[], int]) -> None:
        self.session = session
        self.link = link
        self.out = out
        self.responses = responses
        self._publish = publish
        self._epoch = epoch  # the session's turn epoch now, for the results the client publishes
        self.pending_requests: dict[str, deque[str]] = defaultdict(deque)  # microturn tool -> client call_ids
        self.call_ids: dict[str, str] = {}  # microturn call_id -> the client's call_id
        self.client_calls: dict[str, tuple[str, str]] = {}  # call_id -> (function, job_id) the client runs

    # -- client -> microturn ---------------------------------------------------------------------

    async def function_call(self, item: FunctionCallItem) -> dict[str, Any]:
        """The client's `function_call` item: a microturn tool is requested, a function of its
        own is only echoed. Returns the item to echo."""
        call_id = item.call_id or new_id("call")
        tool = microturn_tool(item.name)
        if tool is not None:
            try:
                arguments = json.loads(item.arguments or "{}")
            except ValueError as e:
                raise ProtocolError(f"item.arguments: not JSON ({e})", "item.arguments") from None
            if not isinstance(arguments, dict):
                raise ProtocolError("item.arguments: a JSON object", "item.arguments")
            await self.link.ensure_open()
            self.pending_requests[tool].append(call_id)
            await self.link.upstream.request_tool(tool, json.dumps(arguments))
        elif item.name not in self.session.tools:
            raise ProtocolError(f"item.name: {item.name!r} is neither a microturn tool (web_search, fetch_url, "
                                "calculator, clock, ui.render) nor a function declared in session.tools",
                                "item.name")
        return function_call_item("", call_id, item.name, item.arguments or "{}")

    async def function_call_output(self, item: FunctionCallOutputItem) -> dict[str, Any]:
        """The client ran one of its functions: the result goes on the session's event stream,
        where the replica takes it like a background result (forwarded, woven into the input).
        Returns the item to echo."""
        await self.link.ensure_open()
        name, job_id = self.client_calls.get(item.call_id, ("function", item.call_id))
        self.client_calls.setdefault(item.call_id, (name, job_id))
        try:
            json.loads(item.output)
            result_json = item.output
        except ValueError:
            result_json = json.dumps(item.output)
        if self._publish is not None:
            opened = self.link.upstream.opened
            event = events_pb2.Event(
                session_id=opened.session_id, event_id=f"realtime:{item.call_id}:{new_id('out')}", job_id=job_id,
                epoch=self._epoch(), created_unix_ms=int(time.time() * 1000),
                tool_result=events_pb2.ToolResult(job_id=job_id, call_id=item.call_id, tool=name,
                                                  result_json=result_json))
            try:
                await self._publish(event)
            except EventTooLarge as e:  # the output, not the bus: the client can send a smaller one
                raise ProtocolError(f"item.output: too large for the session's event stream ({e})", "item.output",
                                    "event_too_large") from None
            except Exception as e:  # noqa: BLE001 - Redis away: the client hears it, the session goes on
                raise ProtocolError(f"item: the result could not reach the session ({e})", "item",
                                    "event_bus_unavailable", "server_error") from None
        return function_call_output_item("", item.call_id, item.output)

    # -- microturn -> client ---------------------------------------------------------------------

    async def on_call(self, call: events_pb2.ToolCall) -> None:
        if call.tool in self.session.tools:  # the client's own function: the client runs it
            self.client_calls[call.call_id] = (call.tool, call.job_id)
            await self.responses.function_call(call.call_id, call.tool, call.arguments_json)
            return
        pending = self.pending_requests.get(call.tool)
        if pending:  # the client asked for it: its own function_call item stands for the call
            self.call_ids[call.call_id] = pending.popleft()
            return
        await self.out.add_item(function_call_item(new_id("item"), call.call_id, call.tool, call.arguments_json))

    async def on_result(self, result: events_pb2.ToolResult) -> None:
        if result.call_id in self.client_calls:
            return  # the client's function: its own function_call_output is the result
        output = result.result_json if not result.error else json.dumps({"error": result.error})
        call_id = self.call_ids.pop(result.call_id, result.call_id)
        await self.out.add_item(function_call_output_item(new_id("item"), call_id, output))
