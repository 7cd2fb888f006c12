"""The `direct` reasoner: no model, run exactly the tool the client or the foreground named.

With a named tool it is a pass-through (arguments as given; the tool registry validates them).
With no tool named it falls back to `web_search` on the last user turn's text, because
"look this up" is what a delegate without a tool most often means; with no user text either
there is nothing to do, and it plans no call. The query is that text on one line, cut to
`MAX_QUERY_CHARS` (what `web_search`'s schema accepts).
"""

from __future__ import annotations

import json
from typing import Any

from background.reasoners.base import PlannedCall, last_user_text
from protos.microturn.v1 import events_pb2

FALLBACK_TOOL = "web_search"
MAX_QUERY_CHARS = 300


class DirectReasoner:
    def __init__(self, fallback_tool: str = FALLBACK_TOOL) -> None:
        self.fallback_tool = fallback_tool

    async def plan(self, job: events_pb2.Job, tools: list[dict[str, Any]]) -> list[PlannedCall]:
        requested = job.requested_tool
        if requested.tool:
            return [PlannedCall(requested.tool, requested.arguments_json or "{}")]
        query = " ".join(last_user_text(job).split())[:MAX_QUERY_CHARS].strip()
        if not query:
            return []
        return [PlannedCall(self.fallback_tool, json.dumps({"query": query}))]
