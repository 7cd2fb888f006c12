"""The background pool's tools: what a reasoner may call, each with a schema and a timeout.

- `base`: `Tool`, `ToolError` (an expected failure), `ToolOutcome` (what a call came to).
- `registry`: `ToolRegistry` (schemas for the reasoner, `call` that never raises) and
  `default_registry(config)`, the standard set below.
- `web_search` (providers: `local_index`, the default, and SearXNG over HTTP), `fetch_url`,
  `calculator`, `clock`, `ui_render` (tool name `ui.render`).
- `config`: `ToolsConfig`, the tools' settings; `background` does not import `cluster`.
"""

from background.tools.base import Tool, ToolError, ToolOutcome
from background.tools.calculator import CalculatorTool
from background.tools.clock import ClockTool
from background.tools.config import ToolsConfig
from background.tools.fetch_url import FetchUrlTool
from background.tools.local_index import LocalIndex
from background.tools.registry import ToolRegistry, default_registry
from background.tools.ui_render import UiRenderTool
from background.tools.web_search import LocalSearch, SearxngSearch, WebSearchTool

__all__ = [
    "CalculatorTool", "ClockTool", "FetchUrlTool", "LocalIndex", "LocalSearch", "SearxngSearch",
    "Tool", "ToolError", "ToolOutcome", "ToolRegistry", "ToolsConfig", "UiRenderTool",
    "WebSearchTool", "default_registry",
]
