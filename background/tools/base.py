"""What every background tool is: a name, a schema for its arguments, a timeout, a result.

The schema is not documentation only: the vLLM reasoner generates a call's arguments as
structured output against it, and the registry validates them before a tool runs. A tool
reports an expected failure (a bad zone, a host not allowed) by raising `ToolError`; the
registry turns that, and everything unexpected, into a `ToolOutcome` with `error` set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar


class ToolError(Exception):
    """An expected failure whose message is safe and useful to show the model and the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Tool(ABC):
    """One tool. Subclasses set the class attributes (or instance ones in `__init__`)."""

    name: ClassVar[str]
    description: ClassVar[str]
    # A JSON schema of type object with "additionalProperties": false; string fields carry a
    # `pattern` or `enum`, and no min/maxLength: beside a pattern xgrammar drops or rejects them,
    # alone they make it refuse escaped characters. Bound lengths in the pattern or in `run`.
    parameters: ClassVar[dict[str, Any]]
    timeout_s: float = 5.0

    @abstractmethod
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        """Do the work on arguments that already passed the schema; return a JSON-able dict."""


@dataclass(frozen=True)
class ToolOutcome:
    """What one call came to: a result, or an error message ("" on success), and its time."""

    tool: str
    result: dict[str, Any] | None
    error: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "result": self.result, "error": self.error,
                "duration_s": self.duration_s}
