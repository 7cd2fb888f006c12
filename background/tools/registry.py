"""The tools a reasoner may call, and the one place where a call cannot go wrong loudly.

`ToolRegistry.call` never raises for a tool's problem: an unknown name, arguments that are not
JSON or break the schema, a `ToolError`, a crash, or a timeout all come back as a `ToolOutcome`
whose `error` says what happened in a sentence the model can act on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from background.tools.base import Tool, ToolError, ToolOutcome
from background.tools.config import ToolsConfig

log = logging.getLogger(__name__)

MAX_ARGUMENTS_BYTES = 16_384  # a tool call's JSON arguments; a model's or client's call is far smaller
MAX_ARGUMENT_DEPTH = 16  # nesting of objects and arrays (Python's parser would recurse itself to death)


def _depth(value: Any) -> int:
    """How deeply `value` nests objects and arrays, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_ARGUMENT_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _closest(error: ValidationError) -> ValidationError:
    """For an anyOf/oneOf failure, the error of the branch that came closest (fewest errors),
    so that the message says "'color' was unexpected" rather than "not valid under any"."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        error = best_match(min(branches.values(), key=len))
    return error


def _field_of(error: ValidationError) -> str:
    """The argument an error is about, as a dotted path ("series.0.values"), or "arguments"."""
    path = [str(p) for p in error.absolute_path]
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in instance]
        path += missing[:1]
    elif error.validator == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        path += sorted(k for k in instance if k not in known)[:1]
    return ".".join(path) or "arguments"


def wire_name(name: str) -> str:
    """A tool name as OpenAI's API accepts it (`[A-Za-z0-9_-]`): "ui.render" is "ui__render"."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.replace(".", "__"))


class ToolRegistry:
    """A fixed set of tools by name, with their schemas checked once at construction."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            schema = tool.parameters
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            cls.check_schema(schema)  # a broken schema is a programming error: fail at start
            if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
                raise ValueError(f"{tool.name}: parameters must be an object schema with additionalProperties false")
            self._tools[tool.name] = tool
            self._validators[tool.name] = cls(schema)

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool:
        return self._tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-style function specs, the shape vLLM and OpenAI endpoints take as `tools`."""
        return [{"type": "function",
                 "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in self._tools.values()]

    def resolve(self, name: str) -> str | None:
        """The registered name for `name` or its wire spelling; None if there is no such tool."""
        if name in self._tools:
            return name
        return next((n for n in self._tools if wire_name(n) == name), None)

    async def call(self, name: str, arguments_json: str) -> ToolOutcome:
        """Run one call; every failure becomes an outcome with `error` set."""
        start = time.monotonic()

        def failed(message: str) -> ToolOutcome:
            return ToolOutcome(name, None, message, time.monotonic() - start)

        registered = self.resolve(name)
        if registered is None:
            return failed(f"unknown tool {name!r}; available: {', '.join(self._tools) or 'none'}")
        name, tool = registered, self._tools[registered]
        if arguments_json and len(arguments_json.encode("utf-8", "surrogatepass")) > MAX_ARGUMENTS_BYTES:
            return failed(f"{name}: arguments are larger than the limit of {MAX_ARGUMENTS_BYTES} bytes")
        try:
            args = json.loads(arguments_json) if arguments_json and arguments_json.strip() else {}
        except (json.JSONDecodeError, TypeError) as exc:
            return failed(f"{name}: arguments are not valid JSON: {exc}")
        except RecursionError:
            return failed(f"{name}: arguments nest deeper than the limit of {MAX_ARGUMENT_DEPTH} levels")
        if not isinstance(args, dict):
            return failed(f"{name}: arguments must be a JSON object, got {type(args).__name__}")
        if _depth(args) > MAX_ARGUMENT_DEPTH:
            return failed(f"{name}: arguments nest deeper than the limit of {MAX_ARGUMENT_DEPTH} levels")
        error = best_match(self._validators[name].iter_errors(args))
        if error is not None:
            error = _closest(error)
            return failed(f"{name}: invalid argument {_field_of(error)}: {error.message}")
        try:
            result = await asyncio.wait_for(tool.run(args), timeout=tool.timeout_s)
        except ToolError as exc:
            return failed(f"{name}: {exc.message}")
        except TimeoutError:
            return failed(f"{name}: timed out after {tool.timeout_s:g} s")
        except Exception as exc:  # a bug in a tool must not take the worker down with it
            log.warning("tool %s failed unexpectedly", name, exc_info=True)
            return failed(f"{name}: failed unexpectedly: {type(exc).__name__}: {exc}")
        try:
            if not isinstance(result, dict):
                raise TypeError(f"returned {type(result).__name__}, not a dict")
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return failed(f"{name}: result is not a JSON object: {type(exc).__name__}: {exc}")
        return ToolOutcome(name, result, "", time.monotonic() - start)


def default_registry(config: ToolsConfig | None = None) -> ToolRegistry:
    """The standard set: web_search, fetch_url, calculator, clock and ui.render."""
    from background.tools.calculator import CalculatorTool
    from background.tools.clock import ClockTool
    from background.tools.fetch_url import FetchUrlTool
    from background.tools.ui_render import UiRenderTool
    from background.tools.web_search import WebSearchTool

    config = config or ToolsConfig()
    return ToolRegistry([
        WebSearchTool.from_config(config),
        FetchUrlTool.from_config(config),
        CalculatorTool(timeout_s=config.local_timeout_s),
        ClockTool(timeout_s=config.local_timeout_s),
        UiRenderTool(timeout_s=config.local_timeout_s),
    ])
