"""What a reasoner is: given a job and the tools on offer, decide which tool calls to make.

The worker runs the calls and publishes the results, so a reasoner only plans; it never runs
tools or touches the bus. Backends: `direct` (runs the tool the job names), `openai` (any
OpenAI-compatible endpoint) and `vllm` (an engine inside the pool replica).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from protos.microturn.v1 import events_pb2


class ReasonerError(Exception):
    """Planning failed (endpoint down, unparseable answer); the message is shown to people."""


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One tool call to make: the tool's name and its arguments as a JSON object string."""

    tool: str
    arguments_json: str


@runtime_checkable
class Reasoner(Protocol):
    """A reasoner may also have `async start()` (the pool awaits it before claiming jobs, so a
    model loads before the first job, not during it) and `async close()` (awaited at drain)."""

    async def plan(self, job: events_pb2.Job, tools: list[dict[str, Any]]) -> list[PlannedCall]:
        """The calls to make for `job`, in order; an empty list means no tool is needed."""
        ...


def last_user_text(job: events_pb2.Job) -> str:
    """The most recent user turn's text (empty if the user has said nothing yet)."""
    for turn in reversed(job.conversation):
        if turn.role == "user" and turn.text.strip():
            return turn.text.strip()
    return ""
