"""Background tools: the registry's error outcomes, calculator, clock and ui.render.

Search and fetch, which talk to local servers, are in test_tools_net.py.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from background.tools import (ClockTool, Tool, ToolError, ToolOutcome, ToolRegistry,
                              ToolsConfig, UiRenderTool, default_registry)
from background.tools.calculator import evaluate
from background.tools.registry import wire_name


def call(registry: ToolRegistry, name: str, args: Any) -> ToolOutcome:
    text = args if isinstance(args, str) else json.dumps(args)
    return asyncio.run(registry.call(name, text))


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return default_registry(ToolsConfig())


# --- the registry ---------------------------------------------------------------------------

class Slow(Tool):
    name = "slow"
    description = "sleeps"
    parameters = {"type": "object", "properties": {}, "additionalProperties": False}
    timeout_s = 0.2

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}


class Broken(Tool):
    name = "broken"
    description = "raises"
    parameters = {"type": "object", "properties": {"how": {"type": "string", "enum": ["crash", "refuse", "list"]}},
                  "required": ["how"], "additionalProperties": False}

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["how"] == "crash":
            raise RuntimeError("boom")
        if args["how"] == "refuse":
            raise ToolError("not today")
        return [1, 2]  # type: ignore[return-value]


def test_default_registry_offers_the_standard_tools_as_openai_functions(registry):
    assert registry.names() == ["web_search", "fetch_url", "calculator", "clock", "ui.render"]
    specs = registry.schemas()
    assert [s["function"]["name"] for s in specs] == registry.names()
    for spec in specs:
        assert spec["type"] == "function"
        assert set(spec["function"]) == {"name", "description", "parameters"}
        assert spec["function"]["description"]
        params = spec["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False


def _walk(schema: Any, path: str = ""):
    if isinstance(schema, dict):
        yield path, schema
        for key, value in schema.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _walk(value, f"{path}/{i}")


def test_schemas_suit_structured_output(registry):
    """Objects are closed; top-level strings carry a pattern or enum; no min/maxLength anywhere
    (xgrammar drops them beside a pattern and refuses escapes under them)."""
    for spec in registry.schemas():
        params = spec["function"]["parameters"]
        for path, node in _walk(params):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, (spec["function"]["name"], path)
            assert not {"minLength", "maxLength"} & set(node), (spec["function"]["name"], path)
        for name, prop in params["properties"].items():
            if prop.get("type") == "string":
                assert "pattern" in prop or "enum" in prop, (spec["function"]["name"], name)


def test_unknown_tool_is_an_error_outcome(registry):
    outcome = call(registry, "teleport", {})
    assert not outcome.ok and outcome.result is None
    assert "unknown tool 'teleport'" in outcome.error and "calculator" in outcome.error


def test_arguments_that_are_not_json_or_not_an_object(registry):
    assert "not valid JSON" in call(registry, "calculator", "{expression: 1+1").error
    assert "must be a JSON object" in call(registry, "calculator", "[1, 2]").error


def test_deep_or_huge_arguments_are_refused_with_the_limit_named(registry):
    """A deeply nested call once raised RecursionError past the registry: the job was retried
    three times and ended as "workers crashed". Now it is an outcome naming the limit."""
    for depth in (17, 5_000):  # past the limit; deep enough to crash Python's own parser (10 kB)
        deep = "[" * depth + "]" * depth
        outcome = call(registry, "ui.render", '{"component": "card", "props": {"x": ' + deep + "}}")
        assert not outcome.ok and "nest deeper than the limit of 16" in outcome.error
    huge = json.dumps({"expression": "1+" * 20_000 + "1"})
    assert "larger than the limit of 16384 bytes" in call(registry, "calculator", huge).error
    assert call(registry, "calculator", {"expression": "1+1"}).ok


def test_schema_violations_name_the_field(registry):
    too_many = call(registry, "web_search", {"query": "paris", "max_results": 50})
    assert "invalid argument max_results" in too_many.error and "50" in too_many.error
    missing = call(registry, "web_search", {"max_results": 3})
    assert "invalid argument query" in missing.error
    extra = call(registry, "clock", {"timezone": "UTC", "zone": "UTC"})
    assert "invalid argument zone" in extra.error
    wrong_type = call(registry, "calculator", {"expression": 12})
    assert "invalid argument expression" in wrong_type.error
    bad_chars = call(registry, "calculator", {"expression": "__import__('os')"})
    assert "invalid argument expression" in bad_chars.error


@pytest.mark.timeout(60)
def test_a_slow_tool_times_out():
    outcome = call(ToolRegistry([Slow()]), "slow", "")
    assert outcome.error == "slow: timed out after 0.2 s"
    assert 0.15 < outcome.duration_s < 2


def test_tool_errors_crashes_and_bad_results_become_outcomes():
    registry = ToolRegistry([Broken()])
    crash = call(registry, "broken", {"how": "crash"})
    assert crash.error == "broken: failed unexpectedly: RuntimeError: boom"
    assert "Traceback" not in crash.error
    assert call(registry, "broken", {"how": "refuse"}).error == "broken: not today"
    assert "not a JSON object" in call(registry, "broken", {"how": "list"}).error


def test_registry_refuses_duplicate_names_and_open_schemas():
    with pytest.raises(ValueError, match="two tools"):
        ToolRegistry([Broken(), Broken()])

    class Open(Slow):
        name = "open"
        parameters = {"type": "object", "properties": {}}

    with pytest.raises(ValueError, match="additionalProperties"):
        ToolRegistry([Open()])


def test_the_openai_wire_name_is_accepted(registry):
    assert wire_name("ui.render") == "ui__render"
    outcome = call(registry, "ui__render", {"component": "list", "props": {"items": ["a"]}})
    assert outcome.ok and outcome.tool == "ui.render"


# --- calculator -----------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 10", 1024),
    ("2^10", 1024), ("-(-3) + +1", 4), ("10 / 4", 2.5), ("sqrt(16) + abs(-2)", 6.0),
    ("round(pi, 2)", 3.14), ("max(1, 7, 3) - min(4, 2)", 5), ("log(8, 2)", 3.0), ("exp(0)", 1.0),
    ("round(cos(0) + sin(0) + tan(0))", 1), ("2 ** -1", 0.5), ("1e3 + 0.5", 1000.5),
])
def test_calculator_evaluates(registry, expression, expected):
    outcome = call(registry, "calculator", {"expression": expression})
    assert outcome.ok, outcome.error
    assert outcome.result == {"expression": expression, "result": pytest.approx(expected)}


@pytest.mark.parametrize("expression, message", [
    ("1 / 0", "division by zero"), ("5 % 0", "division by zero"), ("5 // 0", "division by zero"),
    ("9**9**9", "exponent too large"), ("2 ** 100000", "exponent too large"),
    ("10 ** 5000", "exponent too large"), ("1.5 ** 1e6", "exponent too large"),
    ("2 ** 4096", "result too large"), ("1e308 * 10", "not a finite number"),
    ("10 ** 400 * 1.0", "result too large"), ("foo + 1", "unknown name 'foo'"),
    ("sin", "it is a function"), ("open(1)", "unknown function 'open'"), ("1 +", "syntax error"),
    ("(1", "syntax error"), ("sqrt(-1)", "sqrt: math domain error"), ("(1).real", "Attribute is not allowed"),
    ("sqrt(1, 2)", "sqrt takes 1 argument"), ("(-8) ** (1/3)", "no real result"),
    ("round(1, 1000)", "ndigits"),
])
def test_calculator_refuses_with_a_clear_error(registry, expression, message):
    outcome = call(registry, "calculator", {"expression": expression})
    assert not outcome.ok and message in outcome.error, outcome.error
    assert outcome.duration_s < 1


def test_calculator_refuses_what_the_schema_would_stop_too():
    """The evaluator is safe on its own, whatever reaches it without the registry."""
    for expression, message in [("__import__('os')", "unknown function '__import__'"),
                                ("__import__('os').system('true')", "only plain function names"),
                                ("'a' * 3", "only numbers"), ("[1, 2]", "List is not allowed"),
                                ("True + 1", "only numbers"), ("lambda: 1", "Lambda is not allowed"),
                                ("x if 1 else 2", "IfExp is not allowed"), ("1 < 2", "Compare is not allowed"),
                                ("1" * 201, "too long"), ("   ", "empty expression")]:
        with pytest.raises(ToolError, match=message.replace("(", r"\(").replace("[", r"\[")):
            evaluate(expression)


def test_calculator_never_uses_eval(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("eval/exec called")

    real_compile = builtins.compile

    def parse_only(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "compiled to code, not only parsed"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", parse_only)
    assert evaluate("sqrt(2) ** 2 + 1") == pytest.approx(3.0)


# --- clock ----------------------------------------------------------------------------------

NOON_UTC = datetime(2024, 7, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_clock_in_a_zone_and_by_default_utc():
    registry = ToolRegistry([ClockTool(now=lambda: NOON_UTC)])
    tokyo = call(registry, "clock", {"timezone": "Asia/Tokyo"}).result
    assert tokyo["time"] == "21:00:00" and tokyo["utc_offset"] == "+09:00" and tokyo["date"] == "2024-07-01"
    assert tokyo["iso"] == "2024-07-01T21:00:00+09:00" and tokyo["weekday"] == "Monday"
    paris = call(registry, "clock", {"timezone": "Europe/Paris"}).result
    assert paris["utc_offset"] == "+02:00" and paris["abbreviation"] == "CEST"  # summer time
    default = call(registry, "clock", "").result
    assert default["timezone"] == "UTC" and default["time"] == "12:00:00" and default["unix"] == NOON_UTC.timestamp()
    assert call(registry, "clock", {"timezone": "utc"}).result["timezone"] == "UTC"


def test_clock_reads_the_real_time():
    outcome = call(ToolRegistry([ClockTool()]), "clock", {})
    now = datetime.now(timezone.utc).timestamp()
    assert outcome.ok and abs(outcome.result["unix"] - now) < 5


def test_clock_refuses_an_unknown_zone():
    registry = ToolRegistry([ClockTool()])
    unknown = call(registry, "clock", {"timezone": "Mars/Olympus_Mons"})
    assert "unknown time zone 'Mars/Olympus_Mons'" in unknown.error and "Europe/Paris" in unknown.error
    assert "invalid argument timezone" in call(registry, "clock", {"timezone": "../../etc/passwd"}).error
    assert "unknown time zone" in call(registry, "clock", {"timezone": "Europe"}).error


# --- ui.render ------------------------------------------------------------------------------

def render(props: dict[str, Any], component: str) -> ToolOutcome:
    return call(ToolRegistry([UiRenderTool()]), "ui.render", {"component": component, "props": props})


def test_ui_render_returns_each_component_normalised():
    card = render({"title": "  Paris  ", "body": "Mild, often grey.\n"}, "card")
    assert card.result == {"component": "card",
                           "props": {"title": "Paris", "body": "Mild, often grey.", "image_url": None}}
    image = render({"title": "T", "body": "", "image_url": "https://img.example/a.png"}, "card")
    assert image.result["props"]["image_url"] == "https://img.example/a.png"
    table = render({"columns": ["City", " Temp "], "rows": [["Paris", 12.5], ["Tokyo", None]]}, "table")
    assert table.result == {"component": "table", "props": {
        "columns": ["City", "Temp"], "rows": [["Paris", 12.5], ["Tokyo", None]], "caption": ""}}
    items = render({"items": [" eggs", "flour "], "ordered": True}, "list")
    assert items.result["props"] == {"items": ["eggs", "flour"], "ordered": True, "title": ""}
    chart = render({"kind": "line", "series": [{"name": "Paris", "values": [5, 7, 11]}]}, "chart")
    assert chart.result["props"] == {"kind": "line", "title": "", "x_labels": ["1", "2", "3"],
                                     "series": [{"name": "Paris", "values": [5, 7, 11]}]}
    json.dumps(chart.result)  # the client gets JSON


@pytest.mark.parametrize("component, props, message", [
    ("video", {"items": ["a"]}, "invalid argument component"),
    ("table", {"title": "t", "body": "b"}, "'columns' is a required property (for a table)"),
    ("table", {"columns": ["a", "b"], "rows": [["x", 1], ["y"]]}, "props.rows.1: has 1 cells, expected 2"),
    ("chart", {"kind": "pie", "series": [{"name": "a", "values": [1]}]}, "props.kind"),
    ("chart", {"kind": "bar", "series": [{"name": "a", "values": [1, 2]}, {"name": "b", "values": [1]}]},
     "props.series.1.values"),
    ("chart", {"kind": "bar", "x_labels": ["mon"], "series": [{"name": "a", "values": [1, 2]}]}, "props.x_labels"),
    ("card", {"title": "t", "body": "b", "image_url": "javascript:alert(1)"}, "invalid argument props.image_url"),
    ("card", {"title": "t", "body": "b", "color": "red"}, "invalid argument props.color: Additional properties"),
    ("card", {"title": "t"}, "invalid argument props.body"),
    ("card", {"title": "   ", "body": "b"}, "props.title: must not be blank"),
    ("list", {"items": []}, "invalid argument props.items"),
    ("card", {"title": "t", "body": "b" * 4001}, "props.body: longer than 4000"),
    ("table", {"columns": ["a"], "rows": [["x" * 201]]}, "props.rows.0.0: longer than 200"),
])
def test_ui_render_refuses_malformed_components(component, props, message):
    outcome = render(props, component)
    assert not outcome.ok and message in outcome.error, outcome.error
