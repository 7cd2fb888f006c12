"""`fetch_url`: read a web page as text, without becoming a way into the cluster's network.

A model-chosen URL is untrusted input (server-side request forgery), so by default nothing is
reachable: a host must be on the allow-list, and every address it resolves to must be public
unless `allow_private` is set (tests, in-cluster services). The connection goes to the address
that was checked, not to a second DNS answer, and each redirect hop is checked the same way.
Bodies stop at a size limit, time is bounded, and HTML is stripped to text.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from background.tools.base import Tool, ToolError
from background.tools.config import ToolsConfig

MAX_URL_CHARS = 2048
MAX_REDIRECTS = 5
USER_AGENT = "microturn-fetch/0.1"
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("application/json", "application/xml", "application/javascript")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(ip: IPAddress) -> bool:
    """Whether an address is globally routable (not private, loopback, link-local, ...)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_allowed(host: str, allow_hosts: tuple[str, ...]) -> bool:
    """`host` is listed exactly, or under a "*.domain" entry (which does not match "domain")."""
    host = host.lower().rstrip(".")
    for entry in allow_hosts:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


class _TextExtractor(HTMLParser):
    """Visible text of an HTML document, with line breaks at block elements."""

    SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
             "footer", "nav", "aside", "main", "pre", "blockquote", "hr", "h1", "h2", "h3", "h4",
             "h5", "h6", "dt", "dd", "figcaption", "form"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: scripts and styles dropped, whitespace tidied."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return " ".join("".join(parser.title_parts).split()), "\n".join(line for line in lines if line)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever DNS says by now."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate verified against the host name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    ip: str
    path: str


class FetchUrlTool(Tool):
    """Fetches allow-listed http(s) pages as text."""

    name = "fetch_url"
    description = ("Fetch a web page (http or https) and return its text. Only hosts the operator "
                   "allowed can be fetched; long pages are cut.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "the page's full URL, http:// or https://",
                    # Unbounded here (bounded repeats are slow for xgrammar to compile);
                    # the length is checked in `check`.
                    "pattern": "^https?://[^ \\n\\r\\t\"'<>\\\\]+$"},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, allow_hosts: tuple[str, ...] | list[str] = (), allow_private: bool = False,
                 max_bytes: int = 1_000_000, max_chars: int = 20_000, timeout_s: float = 10.0) -> None:
        self.allow_hosts = tuple(h.strip().lower().rstrip(".") for h in allow_hosts if h.strip())
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: ToolsConfig) -> FetchUrlTool:
        return cls(config.fetch_allow_hosts, config.allow_private, config.fetch_max_bytes,
                   config.fetch_max_chars, config.fetch_timeout_s)

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        # Blocking sockets in a thread; the tool's own deadline is a little shorter than the
        # registry's, so that a slow server ends with this tool's clearer message.
        return await asyncio.to_thread(self.fetch, args["url"].strip(), self.timeout_s * 0.95)

    def check(self, url: str) -> _Target:
        """Where `url` may be fetched from, or `ToolError` before any connection is made."""
        if len(url) > MAX_URL_CHARS:
            raise ToolError(f"URL too long (limit {MAX_URL_CHARS} characters)")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"only http and https URLs can be fetched, not {parts.scheme or 'this'!r}")
        if parts.username is not None or parts.password is not None:
            raise ToolError("URLs with credentials are not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise ToolError("URL has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ToolError("URL has an invalid port") from None
        if not host_allowed(host, self.allow_hosts):
            listed = ", ".join(self.allow_hosts) or "none are configured"
            raise ToolError(f"host {host!r} is not on the fetch allow-list ({listed})")
        ips = self._resolve(host, port)
        if not self.allow_private:
            for ip in ips:
                if not is_public(ip):
                    raise ToolError(f"host {host!r} resolves to {ip}, a private, loopback or "
                                    "link-local address; refused")
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        return _Target(url, parts.scheme, host, port, str(ips[0]), path)

    @staticmethod
    def _resolve(host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ToolError(f"cannot resolve host {host!r}: {exc}") from None
        ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not ips:
            raise ToolError(f"host {host!r} has no addresses")
        return ips

    def fetch(self, url: str, budget_s: float) -> dict[str, Any]:
        """GET `url`, following checked redirects; blocking, with an overall deadline."""
        deadline = time.monotonic() + budget_s
        for _ in range(MAX_REDIRECTS + 1):
            target = self.check(url)
            conn_cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
            conn = conn_cls(target.host, target.port, target.ip, timeout=self._left(deadline, target))
            try:
                conn.request("GET", target.path, headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "text/html, text/plain;q=0.9, application/json;q=0.8, */*;q=0.1"})
                sock = conn.sock  # kept: getresponse() may hand the socket over to the response
                response = conn.getresponse()
                location = response.getheader("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status >= 400:
                    raise ToolError(f"HTTP {response.status} {response.reason} from {target.host}")
                return self._read(response, sock, target, deadline)
            except TimeoutError:
                raise ToolError(f"{target.host} did not answer within {budget_s:.3g} s") from None
            except ssl.SSLError as exc:
                raise ToolError(f"TLS error with {target.host}: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise ToolError(f"cannot fetch from {target.host}: {exc or type(exc).__name__}") from None
            finally:
                conn.close()
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")

    @staticmethod
    def _left(deadline: float, target: _Target) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolError(f"{target.host} did not answer in time")
        return left

    def _read(self, response: http.client.HTTPResponse, sock: socket.socket | None, target: _Target,
              deadline: float) -> dict[str, Any]:
        content_type = response.headers.get_content_type()
        if not (content_type.startswith("text/") or content_type in HTML_TYPES + TEXT_TYPES
                or content_type.endswith(("+json", "+xml"))):
            raise ToolError(f"unsupported content type {content_type!r}: only text can be fetched")
        body = bytearray()
        truncated = False
        while True:
            if sock is not None:  # each read may wait only for what is left of the budget
                sock.settimeout(self._left(deadline, target))
            chunk = response.read1(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > self.max_bytes:  # stop reading past the limit
                del body[self.max_bytes:]
                truncated = True
                break
        charset = response.headers.get_content_charset() or "utf-8"
        try:
            text = body.decode(charset, errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        title = ""
        if content_type in HTML_TYPES:
            title, text = html_to_text(text)
        if len(text) > self.max_chars:
            text, truncated = text[: self.max_chars], True
        return {"url": target.url, "status": response.status, "content_type": content_type,
                "title": title, "text": text, "truncated": truncated, "bytes": len(body)}
