"""A slow SearXNG-style search endpoint on 127.0.0.1, standing in for an external server.

`web_search` with `search_provider="searxng"` pointed here is the real tool doing a real HTTP
call that takes `delay_s`: a job that is reliably in progress long enough to kill its worker
mid-call, or to build a backlog that the pool's autoscaler must react to.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeSearch:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.queries: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("q", [""])[0]
                with fake._lock:
                    fake.queries.append(query)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay_s)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                payload = json.dumps({"results": [
                    {"title": f"About {query}", "url": "https://example.org/a", "content": f"{query} explained",
                     "score": 1.0}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a handler still sleeping does not hold up stop()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
