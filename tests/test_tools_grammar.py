"""The tools' schemas compile in xgrammar (what vLLM's structured output uses) and its grammar
accepts the arguments the tools expect and refuses what the registry would refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from background.tools import default_registry

xgr = pytest.importorskip("xgrammar")
accepts = getattr(getattr(xgr, "testing", None), "_is_grammar_accept_string", None)

SCHEMAS = {s["function"]["name"]: s["function"]["parameters"] for s in default_registry().schemas()}

CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("calculator", {"expression": "sqrt(2) * (3 + 4) ** 2 - 10 // 3"}, True),
    ("calculator", {"expression": "__import__(\"os\")"}, False),
    ("clock", {}, True),
    ("clock", {"timezone": "America/Argentina/Buenos_Aires"}, True),
    ("clock", {"timezone": "../../etc/passwd"}, False),
    ("web_search", {"query": "weather in Paris", "max_results": 3}, True),
    ("web_search", {"query": "weather", "max_results": 11}, False),
    ("web_search", {"query": "x" * 301}, False),
    ("fetch_url", {"url": "https://example.org/a?b=c#d"}, True),
    ("fetch_url", {"url": "file:///etc/passwd"}, False),
    ("ui.render", {"component": "card", "props": {"title": "Paris", "body": "Mild.\nOften \"grey\"."}}, True),
    ("ui.render", {"component": "card", "props": {"title": "Paris", "body": "b", "color": "red"}}, False),
    ("ui.render", {"component": "table",
                   "props": {"columns": ["City", "°C", "Note"], "rows": [["Paris", 12.5, None]]}}, True),
    ("ui.render", {"component": "chart",
                   "props": {"kind": "bar", "series": [{"name": "a", "values": [1, 2.5]}]}}, True),
    ("ui.render", {"component": "chart", "props": {"kind": "pie", "series": [{"name": "a", "values": [1]}]}}, False),
]


@pytest.mark.timeout(120)
def test_schemas_compile_and_agree_with_the_registry():
    grammars = {name: xgr.Grammar.from_json_schema(json.dumps(schema), strict_mode=True)
                for name, schema in SCHEMAS.items()}
    if accepts is None:
        pytest.skip("this xgrammar has no testing helper to match strings")
    for name, args, expected in CASES:
        assert accepts(grammars[name], json.dumps(args, ensure_ascii=False)) is expected, (name, args)
