"""web_search (the shipped local index, SearXNG over HTTP) and fetch_url's rules.

Every server here is a `http.server` these tests start on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import tomllib
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import background.tools.fetch_url as fetch_module
from background.tools import (FetchUrlTool, LocalIndex, LocalSearch, SearxngSearch, ToolError, ToolOutcome,
                              ToolRegistry, ToolsConfig, WebSearchTool, default_registry)
from background.tools.config import SHIPPED_CORPUS
from background.tools.fetch_url import host_allowed, html_to_text, is_public
from background.tools.local_index import fts5_available
from background.tools.web_search import httpx

ROOT = Path(__file__).resolve().parents[1]
Route = Callable[[BaseHTTPRequestHandler], None]


def call(registry: ToolRegistry, name: str, args: dict[str, Any]) -> ToolOutcome:
    return asyncio.run(registry.call(name, json.dumps(args)))


class LocalServer:
    """A threaded http.server on 127.0.0.1 serving `routes`; records the paths it was asked for."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.requests: list[str] = []
        self.release = threading.Event()  # slow handlers wait on it; set at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404, "no such page")
                else:
                    route(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
          headers: dict[str, str] | None = None) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)
    return route


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Route]], LocalServer]]:
    servers: list[LocalServer] = []

    def start(routes: dict[str, Route]) -> LocalServer:
        servers.append(LocalServer(routes))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- web_search on the shipped corpus -------------------------------------------------------

def test_this_python_has_fts5():
    assert fts5_available()


def test_the_shipped_corpus_is_packaged():
    files = sorted(SHIPPED_CORPUS.glob("*.md"))
    assert 12 <= len(files) <= 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# ") and len(text.split()) > 120, path.name
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package_dir = ROOT / "background"
    for path in files:
        relative = path.relative_to(package_dir).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in data["background"]), relative


@pytest.fixture(scope="module")
def search() -> ToolRegistry:
    return default_registry(ToolsConfig())


def test_weather_in_paris_finds_the_paris_weather_document(search):
    outcome = call(search, "web_search", {"query": "weather in Paris"})
    assert outcome.ok, outcome.error
    result = outcome.result
    assert result["provider"] == "local" and result["query"] == "weather in Paris"
    top = result["results"][0]
    assert top["url"] == "local:paris-weather.md" and top["title"] == "Weather and climate in Paris"
    assert "Paris" in top["snippet"] and not top["snippet"].startswith("#")
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) <= 5


@pytest.mark.parametrize("query, expected", [
    ("how do I descale my kettle", "local:kettle-manual.md"),
    ("Tokyo trains IC card", "local:tokyo-transport.md"),
    ("rule of 72", "local:compound-interest.md"),
    ("pair wireless headphones", "local:headphones-pairing.md"),
])
def test_other_queries_find_their_document(search, query, expected):
    assert call(search, "web_search", {"query": query}).result["results"][0]["url"] == expected


def test_search_limits_and_odd_queries(search):
    assert len(call(search, "web_search", {"query": "climate", "max_results": 2}).result["results"]) == 2
    assert call(search, "web_search", {"query": "zzyzx qwxv"}).result["results"] == []
    odd = call(search, "web_search", {"query": 'paris" OR (NEAR* ^tokyo -'})  # FTS5 syntax is just text
    assert odd.ok and odd.result["results"]
    assert "no searchable words" in call(search, "web_search", {"query": "?!"}).error
    assert "invalid argument query" in call(search, "web_search", {"query": "two\nlines"}).error


def test_the_index_cache_file_is_rebuilt_when_documents_change(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Lighthouses\n\nA lighthouse guides ships at night.\n")
    cache = tmp_path / "cache" / "index.sqlite"
    first = LocalIndex(corpus, cache)
    assert len(first) == 1 and first.search("ships")[0]["url"] == "local:a.md"
    first.close()
    (corpus / "notes.txt").write_text("Volcanoes erupt molten rock called lava.\n")
    second = LocalIndex(corpus, cache)
    hits = second.search("lava")
    assert len(second) == 2 and hits[0]["url"] == "local:notes.txt" and hits[0]["title"] == "notes"
    second.close()
    assert cache.is_file()


def test_a_missing_corpus_is_an_error_outcome(tmp_path):
    registry = default_registry(ToolsConfig(corpus_dir=tmp_path / "nowhere"))
    assert "corpus folder not found" in call(registry, "web_search", {"query": "x"}).error


# --- web_search through a SearXNG-style server ----------------------------------------------

SEARXNG_ANSWER = {"query": "paris", "results": [
    {"title": "Paris  weather", "url": "https://weather.example/paris", "content": "Mild\n and grey.", "score": 2.5},
    {"title": "No URL here", "content": "skipped"},
    {"title": "Paris guide", "url": "https://guide.example/paris", "content": "Museums.", "engine": "x"},
    {"title": "Third", "url": "https://third.example/", "content": ""},
]}

CLIENTS = [pytest.param(False, id="urllib"),
           pytest.param(True, id="httpx", marks=pytest.mark.skipif(httpx is None, reason="httpx not installed"))]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_httpx", CLIENTS)
def test_searxng_provider_parses_results(serve, use_httpx):
    server = serve({"/search": reply(200, json.dumps(SEARXNG_ANSWER).encode(), "application/json")})
    tool = WebSearchTool(SearxngSearch(server.url + "/", timeout_s=5, use_httpx=use_httpx))
    outcome = call(ToolRegistry([tool]), "web_search", {"query": "weather in Paris", "max_results": 2})
    assert outcome.ok, outcome.error
    assert outcome.result == {"query": "weather in Paris", "provider": "searxng", "results": [
        {"title": "Paris weather", "url": "https://weather.example/paris", "snippet": "Mild and grey.", "score": 2.5},
        {"title": "Paris guide", "url": "https://guide.example/paris", "snippet": "Museums.", "score": None}]}
    assert server.requests == ["/search?q=weather+in+Paris&format=json"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_httpx", CLIENTS)
def test_searxng_provider_errors(serve, use_httpx):
    server = serve({"/forbidden/search": reply(403, b"json format disabled"),
                    "/html/search": reply(200, b"<html>not json</html>", "text/html"),
                    "/shape/search": reply(200, b'{"answers": []}', "application/json")})

    def error(base_url: str) -> str:
        tool = WebSearchTool(SearxngSearch(base_url, timeout_s=5, use_httpx=use_httpx))
        return call(ToolRegistry([tool]), "web_search", {"query": "x"}).error

    assert "HTTP 403 (is the json format enabled" in error(server.url + "/forbidden")
    assert "not JSON" in error(server.url + "/html")
    assert "no results list" in error(server.url + "/shape")
    assert "search provider unreachable" in error(f"http://127.0.0.1:{closed_port()}")


def test_searxng_is_chosen_by_config():
    config = ToolsConfig(search_provider="searxng", searxng_url="http://searxng:8080")
    tool = default_registry(config).get("web_search")
    assert isinstance(tool.provider, SearxngSearch) and tool.provider.base_url == "http://searxng:8080"
    assert isinstance(default_registry().get("web_search").provider, LocalSearch)
    with pytest.raises(ValueError, match="searxng_url"):
        ToolsConfig(search_provider="searxng")


# --- fetch_url ------------------------------------------------------------------------------

PAGE = (b"<html><head><title>Test &amp; page</title><style>body { color: red }</style></head>"
        b"<body><h1>Hello world &amp; friends</h1><script>alert('x')</script>"
        b"<p>First   paragraph.</p><ul><li>one</li><li>two</li></ul></body></html>")


def slow(server_ref: list[LocalServer]) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        server_ref[0].release.wait(10)
        reply(200, b"late")(handler)
    return route


@pytest.fixture
def site(serve) -> LocalServer:
    ref: list[LocalServer] = []
    server = serve({
        "/page.html": reply(200, PAGE, "text/html; charset=utf-8"),
        "/notes.txt": reply(200, "café au lait\n".encode("latin-1"), "text/plain; charset=latin-1"),
        "/big.txt": reply(200, b"x" * 3_000_000),
        "/image.png": reply(200, b"\x89PNG....", "image/png"),
        "/hop": reply(302, b"", headers={"Location": "/page.html"}),
        "/out": reply(302, b"", headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        "/loop": reply(302, b"", headers={"Location": "/loop"}),
        "/slow": slow(ref),
    })
    ref.append(server)
    return server


def fetcher(**kwargs: Any) -> ToolRegistry:
    kwargs.setdefault("allow_hosts", ("127.0.0.1",))
    kwargs.setdefault("allow_private", True)
    return ToolRegistry([FetchUrlTool(**kwargs)])


@pytest.mark.timeout(60)
def test_fetch_url_returns_a_page_as_text(site):
    outcome = call(fetcher(), "fetch_url", {"url": site.url + "/page.html"})
    assert outcome.ok, outcome.error
    result = outcome.result
    assert result["title"] == "Test & page" and result["status"] == 200 and result["content_type"] == "text/html"
    assert result["text"] == "Hello world & friends\nFirst paragraph.\none\ntwo"
    assert result["truncated"] is False and result["bytes"] == len(PAGE)
    notes = call(fetcher(), "fetch_url", {"url": site.url + "/notes.txt"}).result
    assert notes["text"] == "café au lait\n" and notes["title"] == ""


@pytest.mark.timeout(60)
def test_fetch_url_stops_at_the_size_limit_and_cuts_long_text(site):
    big = call(fetcher(max_bytes=100_000, max_chars=10**6), "fetch_url", {"url": site.url + "/big.txt"}).result
    assert big["truncated"] is True and big["bytes"] == 100_000 and len(big["text"]) == 100_000
    short = call(fetcher(max_chars=50), "fetch_url", {"url": site.url + "/big.txt"}).result
    assert short["truncated"] is True and len(short["text"]) == 50


@pytest.mark.timeout(60)
def test_fetch_url_follows_checked_redirects(site):
    hop = call(fetcher(), "fetch_url", {"url": site.url + "/hop"})
    assert hop.ok and hop.result["url"] == site.url + "/page.html" and hop.result["title"] == "Test & page"
    out = call(fetcher(), "fetch_url", {"url": site.url + "/out"})
    assert "host '169.254.169.254' is not on the fetch allow-list" in out.error
    out_listed = call(fetcher(allow_hosts=("127.0.0.1", "169.254.169.254"), allow_private=False),
                      "fetch_url", {"url": site.url + "/out"})
    assert "resolves to 127.0.0.1" in out_listed.error  # the first hop is already refused
    assert "too many redirects" in call(fetcher(), "fetch_url", {"url": site.url + "/loop"}).error


@pytest.mark.timeout(60)
def test_fetch_url_errors(site):
    assert "HTTP 404" in call(fetcher(), "fetch_url", {"url": site.url + "/missing"}).error
    assert "unsupported content type 'image/png'" in call(fetcher(), "fetch_url", {"url": site.url + "/image.png"}).error
    refused = call(fetcher(), "fetch_url", {"url": f"http://127.0.0.1:{closed_port()}/"})
    assert "cannot fetch from 127.0.0.1" in refused.error
    late = call(fetcher(timeout_s=0.5), "fetch_url", {"url": site.url + "/slow"})
    assert "did not answer" in late.error and late.duration_s < 2
    assert "invalid argument url" in call(fetcher(), "fetch_url", {"url": "ftp://127.0.0.1/x"}).error
    assert "invalid argument url" in call(fetcher(), "fetch_url", {"url": "file:///etc/passwd"}).error


@pytest.fixture
def no_network(monkeypatch) -> None:
    """Any connection or DNS lookup fails the test: refusals must happen before either."""
    def forbidden(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("fetch_url tried to connect")

    monkeypatch.setattr(fetch_module.socket, "create_connection", forbidden)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.1.1", "172.16.0.5",
                                  "100.64.0.1", "0.0.0.0", "[::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "localhost"])
def test_private_addresses_are_refused_by_default_without_connecting(site, no_network, host):
    bare = host.strip("[]")
    tool = FetchUrlTool(allow_hosts=(bare,))  # listed, but private addresses stay refused
    port = site.port if host == "127.0.0.1" else 80
    with pytest.raises(ToolError, match="private, loopback or link-local address; refused"):
        tool.fetch(f"http://{host}:{port}/page.html", 5)
    assert site.requests == []


def test_by_default_no_host_is_allowed_and_nothing_is_resolved(monkeypatch, no_network):
    def no_dns(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("fetch_url resolved a host it should have refused first")

    monkeypatch.setattr(fetch_module.socket, "getaddrinfo", no_dns)
    registry = default_registry()
    outcome = call(registry, "fetch_url", {"url": "https://example.com/"})
    assert "host 'example.com' is not on the fetch allow-list (none are configured)" in outcome.error
    tool = FetchUrlTool(allow_hosts=("example.com",))
    with pytest.raises(ToolError, match="credentials"):
        tool.check("http://user:secret@example.com/")
    with pytest.raises(ToolError, match="only http and https"):
        tool.check("gopher://example.com/")


def test_allow_list_and_address_rules():
    hosts = ("docs.example.org", "*.wiki.example")
    assert host_allowed("DOCS.example.org.", hosts) and not host_allowed("evil-docs.example.org", hosts)
    assert host_allowed("en.wiki.example", hosts) and host_allowed("a.b.wiki.example", hosts)
    assert not host_allowed("wiki.example", hosts) and not host_allowed("badwiki.example", hosts)
    from ipaddress import ip_address
    assert is_public(ip_address("93.184.216.34")) and is_public(ip_address("2606:4700::1"))
    for private in ("10.0.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "::1",
                    "fd00::1", "::ffff:10.0.0.1"):
        assert not is_public(ip_address(private)), private


def test_html_to_text_drops_scripts_and_keeps_blocks():
    title, text = html_to_text("<title> A  </title><div>x<br>y</div><noscript>no</noscript><p>&lt;b&gt;</p>")
    assert title == "A" and text == "x\ny\n<b>"
