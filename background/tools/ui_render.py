"""Generative UI: a component the client can draw, checked here so that a client never has to.

The model (or a client) names a component kind and its props; `ui.render` validates them
against that kind's schema and returns them normalised: strings trimmed, optional fields
present with their defaults, tables and charts consistent in shape. The result is what the
foreground forwards to clients as a UI event.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from background.tools.base import Tool, ToolError

LINE = "^[^\\n\\r]{1,%d}$"  # one line of 1..n characters; a pattern, since xgrammar honours those
URL = "^https?://[^ \\n\\r\\t\"'<>]+$"  # unbounded: long bounded repeats are slow to compile
MAX_URL_CHARS = 2048  # so the URL's length is checked in code


def _line(n: int, description: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "string", "pattern": LINE % n}
    if description:
        spec["description"] = description
    return spec


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


# Free text has no maxLength: xgrammar 0.2.8 then refuses escapes (newlines, quotes) in it.
# Lengths of free text are checked in `_normalise` instead.
MAX_BODY_CHARS, MAX_CELL_CHARS = 4000, 200
CELL = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}

PROPS: dict[str, dict[str, Any]] = {
    "card": _object({
        "title": _line(120),
        "body": {"type": "string", "description": f"plain text, may span lines, up to {MAX_BODY_CHARS} characters"},
        "image_url": {"type": "string", "pattern": URL, "description": "http(s) URL of an image"},
    }, ["title", "body"]),
    "table": _object({
        "columns": {"type": "array", "items": _line(80), "minItems": 1, "maxItems": 12},
        "rows": {"type": "array", "items": {"type": "array", "items": CELL, "maxItems": 12},
                 "maxItems": 100, "description": "one array of cells per row, as many as columns"},
        "caption": _line(200),
    }, ["columns", "rows"]),
    "list": _object({
        "items": {"type": "array", "items": _line(300), "minItems": 1, "maxItems": 50},
        "ordered": {"type": "boolean"},
        "title": _line(120),
    }, ["items"]),
    "chart": _object({
        "kind": {"type": "string", "enum": ["line", "bar"]},
        "title": _line(120),
        "x_labels": {"type": "array", "items": _line(40), "maxItems": 100},
        "series": {"type": "array", "minItems": 1, "maxItems": 8, "items": _object({
            "name": _line(60),
            "values": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 100},
        }, ["name", "values"])},
    }, ["kind", "series"]),
}

_VALIDATORS = {kind: jsonschema.Draft202012Validator(schema) for kind, schema in PROPS.items()}


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _normalise(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    """Trimmed strings, every optional field present, shapes consistent; `ToolError` if not."""
    if kind == "card":
        out: dict[str, Any] = {"title": props["title"].strip(), "body": props["body"].strip(),
                               "image_url": props.get("image_url")}
        if len(out["body"]) > MAX_BODY_CHARS:
            raise ToolError(f"props.body: longer than {MAX_BODY_CHARS} characters")
        if len(out["image_url"] or "") > MAX_URL_CHARS:
            raise ToolError(f"props.image_url: longer than {MAX_URL_CHARS} characters")
    elif kind == "table":
        columns = [c.strip() for c in props["columns"]]
        rows = [[_strip(cell) for cell in row] for row in props["rows"]]
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ToolError(f"props.rows.{i}: has {len(row)} cells, expected {len(columns)} (one per column)")
            for j, cell in enumerate(row):
                if isinstance(cell, str) and len(cell) > MAX_CELL_CHARS:
                    raise ToolError(f"props.rows.{i}.{j}: longer than {MAX_CELL_CHARS} characters")
        out = {"columns": columns, "rows": rows, "caption": props.get("caption", "").strip()}
    elif kind == "list":
        out = {"items": [i.strip() for i in props["items"]], "ordered": bool(props.get("ordered", False)),
               "title": props.get("title", "").strip()}
    else:  # chart
        series = [{"name": s["name"].strip(), "values": list(s["values"])} for s in props["series"]]
        length = len(series[0]["values"])
        for i, s in enumerate(series):
            if len(s["values"]) != length:
                raise ToolError(f"props.series.{i}.values: has {len(s['values'])} values, "
                                f"expected {length} like the first series")
        labels = [x.strip() for x in props.get("x_labels", [])] or [str(i + 1) for i in range(length)]
        if len(labels) != length:
            raise ToolError(f"props.x_labels: has {len(labels)} labels, expected {length} (one per value)")
        out = {"kind": props["kind"], "title": props.get("title", "").strip(), "x_labels": labels,
               "series": series}
    required = {"card": ("title",), "table": ("columns",), "list": ("items",), "chart": ()}[kind]
    for key in required:  # the patterns allow whitespace-only lines; a blank one draws nothing
        value = out[key]
        if not value or (isinstance(value, list) and not all(value)):
            raise ToolError(f"props.{key}: must not be blank")
    return out


class UiRenderTool(Tool):
    """Checks and returns a card, table, list or chart for the client to draw."""

    name = "ui.render"
    description = ("Show the user a visual component. component is card (props: title, body, "
                   "optional image_url), table (columns, rows, optional caption), list (items, "
                   "optional ordered, title) or chart (kind line|bar, series [{name, values}], "
                   "optional x_labels, title).")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "component": {"type": "string", "enum": list(PROPS)},
            "props": {"anyOf": list(PROPS.values())},
        },
        "required": ["component", "props"],
        "additionalProperties": False,
    }

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        kind, props = args["component"], args["props"]
        error = best_match(_VALIDATORS[kind].iter_errors(props))
        if error is not None:  # props fit some kind (the schema's anyOf) but not this one
            where = ".".join(["props", *map(str, error.absolute_path)])
            raise ToolError(f"{where}: {error.message} (for a {kind})")
        return {"component": kind, "props": _normalise(kind, props)}
