"""`web_search`: one tool, several providers behind it.

The default provider is the embedded local index (no network, works on a laptop and in CI);
production points the tool at a SearXNG-style server over HTTP. Either way the model sees the
same result shape: `{title, url, snippet, score}` per hit, best first.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from background.tools.base import Tool, ToolError
from background.tools.config import ToolsConfig
from background.tools.local_index import LocalIndex

try:  # httpx is in the venv through other packages, but microturn does not depend on it
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None  # type: ignore[assignment]

MAX_RESULTS = 10
MAX_QUERY_CHARS = 300
MAX_RESPONSE_BYTES = 2_000_000
MAX_SNIPPET_CHARS = 500


class SearchProvider(Protocol):
    name: str

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]: ...


class LocalSearch:
    """The embedded index as a provider; searches run in a thread, off the event loop."""

    name = "local"

    def __init__(self, index: LocalIndex) -> None:
        self.index = index

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.index.search, query, max_results)


def parse_searxng(payload: bytes, max_results: int) -> list[dict[str, Any]]:
    """Hits from a SearXNG JSON answer (`results[].title/url/content`); `ToolError` if malformed."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ToolError("search provider answered with something that is not JSON") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ToolError("search provider's answer has no results list")
    hits: list[dict[str, Any]] = []
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        score = item.get("score")
        hits.append({
            "title": " ".join(str(item.get("title") or item["url"]).split()),
            "url": item["url"],
            "snippet": " ".join(str(item.get("content") or "").split())[:MAX_SNIPPET_CHARS],
            "score": round(float(score), 4) if isinstance(score, (int, float)) else None,
        })
        if len(hits) == max_results:
            break
    return hits


class SearxngSearch:
    """A SearXNG-style server: `GET {base_url}/search?q=...&format=json` (json format enabled)."""

    name = "searxng"

    def __init__(self, base_url: str, timeout_s: float = 5.0, use_httpx: bool | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"searxng base_url must be http(s), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.use_httpx = httpx is not None if use_httpx is None else use_httpx

    def url_for(self, query: str) -> str:
        return f"{self.base_url}/search?" + urllib.parse.urlencode({"q": query, "format": "json"})

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        url = self.url_for(query)
        if self.use_httpx:
            status, payload = await self._get_httpx(url)
        else:
            status, payload = await asyncio.to_thread(self._get_urllib, url)
        if status != 200:
            hint = " (is the json format enabled in the server's settings?)" if status == 403 else ""
            raise ToolError(f"search provider answered HTTP {status}{hint}")
        return parse_searxng(payload, max_results)

    async def _get_httpx(self, url: str) -> tuple[int, bytes]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise ToolError("search provider's answer is too large")
                    return response.status_code, bytes(body)
        except httpx.TimeoutException:
            raise ToolError(f"search provider did not answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"search provider unreachable: {exc or type(exc).__name__}") from None

    def _get_urllib(self, url: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ToolError("search provider's answer is too large")
                return response.status, body
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except TimeoutError:
            raise ToolError(f"search provider did not answer within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ToolError(f"search provider unreachable: {reason}") from None


class WebSearchTool(Tool):
    """Search documents for the reasoner; the provider decides which documents."""

    name = "web_search"
    description = ("Search for documents about a topic. Returns up to max_results hits, "
                   "best first, each with a title, url and snippet.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to search for, in a few words",
                      "pattern": "^[^\\n\\r\\t]{1,%d}$" % MAX_QUERY_CHARS},
            "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "default": 5},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, provider: SearchProvider, timeout_s: float = 5.0) -> None:
        self.provider = provider
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: ToolsConfig) -> WebSearchTool:
        provider: SearchProvider
        if config.search_provider == "searxng":
            # The HTTP timeout is a little shorter than the tool's, so its clearer error wins.
            provider = SearxngSearch(config.searxng_url, timeout_s=config.search_timeout_s * 0.9)
        else:
            provider = LocalSearch(LocalIndex(config.corpus_dir, config.index_path))
        return cls(provider, timeout_s=config.search_timeout_s)

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        query = args["query"].strip()
        if not query:
            raise ToolError("query is blank")
        max_results = int(args.get("max_results", 5))
        results = await self.provider.search(query, max_results)
        return {"query": query, "provider": self.provider.name, "results": results}
